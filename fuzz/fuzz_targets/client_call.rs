#![no_main]
//! Fuzzes the client call state machine through the model in
//! `crates/majordomo-proto/tests/support/client_model.rs`.

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/majordomo-proto/tests/support/client_model.rs"]
mod client_model;

fuzz_target!(|data: &[u8]| client_model::run(data));
