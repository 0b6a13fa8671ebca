#![no_main]
//! Fuzzes the Simple and Paranoid Pirate queue state machine through the model in
//! `crates/majordomo-proto/tests/support/pirate_model.rs`.

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/majordomo-proto/tests/support/pirate_model.rs"]
mod pirate_model;

fuzz_target!(|data: &[u8]| {
    pirate_model::run(data);
});
