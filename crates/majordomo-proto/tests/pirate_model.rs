//! Property test over the Pirate queue model: random operation sequences keep every invariant,
//! for the Simple and the Paranoid Pirate queue alike.

#[path = "support/pirate_model.rs"]
mod pirate_model;

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::pirate::{PirateQueue, QueueConfig, QueueStats, Side};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn pirate_queue_invariants_hold(data in prop::collection::vec(any::<u8>(), 0..400)) {
        pirate_model::run(&data);
    }
}

/// The operations reach every outcome the invariants speak of, so none of them holds vacuously.
#[test]
fn random_sequences_reach_every_outcome() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut byte = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[0]
    };
    for mode in [0u8, 1] {
        let mut seen = QueueStats::default();
        for _ in 0..200 {
            let mut data = vec![mode];
            data.extend((0..300).map(|_| byte()));
            let s = pirate_model::run(&data);
            seen.replies += s.replies;
            seen.lost_replies += s.lost_replies;
            seen.expired += s.expired;
            seen.rejected += s.rejected;
            seen.requeued += s.requeued;
            seen.abandoned += s.abandoned;
            seen.expired_workers += s.expired_workers;
            seen.rejoined_workers += s.rejoined_workers;
            seen.stale_replies += s.stale_replies;
            seen.protocol_errors += s.protocol_errors;
            seen.undeliverable += s.undeliverable;
        }
        let reached = [
            seen.replies,
            seen.lost_replies,
            seen.expired,
            seen.rejected,
            seen.requeued,
            seen.abandoned,
            seen.stale_replies,
            seen.protocol_errors,
            seen.undeliverable,
        ];
        assert!(reached.iter().all(|&n| n > 0), "mode {mode}: {seen:?}");
        assert_eq!(seen.expired_workers > 0, mode == 1, "mode {mode}: {seen:?}");
        assert_eq!(
            seen.rejoined_workers > 0,
            mode == 1,
            "mode {mode}: {seen:?}"
        );
    }
}

/// The fuzz target's seeds run clean through the same model and get requests answered.
#[test]
fn fuzz_seeds_run_clean() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/pirate_queue");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
        let data = std::fs::read(entry.expect("a seed").path()).expect("a readable seed");
        assert!(
            pirate_model::run(&data).replies > 0,
            "a seed that gets nothing answered"
        );
        seeds += 1;
    }
    assert!(seeds > 0, "no seeds in {}", dir.display());
}

/// When several workers expire in one timeout, the request one of them held goes back to the
/// queue for a live worker, not to the others expiring with it: that would spend its deliveries
/// on dead workers, and abandon it once they are spent.
#[test]
fn requests_of_workers_expiring_together_are_not_spent_on_each_other() {
    let heartbeat = HeartbeatConfig::new(Duration::from_millis(100), 3);
    let ready = Bytes::from_static(&[0x01]);
    // The queue visits expired workers in an order that varies from queue to queue: try several.
    for _ in 0..16 {
        let mut now = Instant::now();
        let mut queue = PirateQueue::new(now, QueueConfig::paranoid().heartbeat(Some(heartbeat)));
        for worker in ["w0", "w1", "w2", "w3"] {
            queue
                .handle_backend(now, &[Bytes::from(worker), ready.clone()])
                .expect("READY");
        }
        queue
            .handle_frontend(now, &[Bytes::from("c"), Bytes::new(), Bytes::from("job")])
            .expect("a request");
        let sent: Vec<_> = std::iter::from_fn(|| queue.poll_transmit()).collect();
        assert_eq!(sent.len(), 1, "the request goes to one worker: {sent:?}");
        // All four stay silent until they expire.
        let mut handed = Vec::new();
        for _ in 0..100 {
            if queue.stats().workers == 0 {
                break;
            }
            now = queue.poll_timeout();
            queue.handle_timeout(now);
            handed.extend(
                std::iter::from_fn(|| queue.poll_transmit())
                    .filter(|t| t.side == Side::Backend && t.frames.len() > 2),
            );
        }
        assert!(handed.is_empty(), "handed to expiring workers: {handed:?}");
        let s = queue.stats();
        assert_eq!(
            (s.expired_workers, s.requeued, s.abandoned, s.queued),
            (4, 1, 0, 1),
            "{s:?}"
        );
    }
}
