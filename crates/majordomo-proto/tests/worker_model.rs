//! Property test over the worker session model: random operation sequences keep every invariant.

#[path = "support/worker_model.rs"]
mod worker_model;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn worker_session_invariants_hold(data in prop::collection::vec(any::<u8>(), 0..300)) {
        worker_model::run(&data);
    }
}
