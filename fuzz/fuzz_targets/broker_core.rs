#![no_main]
//! Fuzzes the broker state machine through the model in
//! `crates/majordomo-proto/tests/support/broker_model.rs`.

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/majordomo-proto/tests/support/broker_model.rs"]
mod broker_model;

fuzz_target!(|data: &[u8]| broker_model::run(data));
