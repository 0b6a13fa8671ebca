#![no_main]
//! Fuzzes the worker session through the model in
//! `crates/majordomo-proto/tests/support/worker_model.rs`.

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/majordomo-proto/tests/support/worker_model.rs"]
mod worker_model;

fuzz_target!(|data: &[u8]| worker_model::run(data));
