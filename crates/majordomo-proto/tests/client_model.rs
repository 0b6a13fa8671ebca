//! Property test over the client call model: random operation sequences keep every invariant.

#[path = "support/client_model.rs"]
mod client_model;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn client_call_invariants_hold(data in prop::collection::vec(any::<u8>(), 0..200)) {
        client_model::run(&data);
    }
}
