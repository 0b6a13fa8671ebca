//! Property test over the broker model: random operation sequences keep every invariant.

#[path = "support/broker_model.rs"]
mod broker_model;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn broker_invariants_hold(data in prop::collection::vec(any::<u8>(), 0..400)) {
        broker_model::run(&data);
    }
}
