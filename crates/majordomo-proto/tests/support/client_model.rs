//! A model run of a client call: arbitrary replies (right, for another service, malformed),
//! timeouts, lost connections and time steps, with its invariants checked after every step: no
//! panic; exactly one outcome; nothing after it; attempts counted one by one and never past the
//! configured number; "no reply" only after the last attempt; a reply for another service or a
//! malformed one never taken for the answer.
//! Shared by the property test `client_model.rs` and the fuzz target `client_call`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::client::{Call, CallError, CallEvent};
use majordomo_proto::mdp::ClientReply;
use majordomo_proto::Limits;

/// Runs the operations encoded in `data` (two bytes each) and panics on a broken invariant.
pub fn run(data: &[u8]) {
    let Some((&attempts, ops)) = data.split_first() else {
        return;
    };
    let attempts = u32::from(attempts % 5);
    let timeout = Duration::from_millis(100);
    let mut now = Instant::now();
    let service = Bytes::from_static(b"echo");
    let mut call = Call::new(
        now,
        service.clone(),
        vec![Bytes::from_static(b"x")],
        timeout,
        attempts,
        Limits::default(),
    )
    .expect("valid service");
    let mut outcome: Option<Result<Vec<Bytes>, CallError>> = None;
    let mut attempt = 1;
    for op in ops.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        let event = match kind % 6 {
            0 => {
                let reply = ClientReply {
                    service: service.clone(),
                    body: vec![Bytes::from(vec![arg])],
                };
                call.handle_reply(&reply.encode())
            }
            1 => {
                let reply = ClientReply {
                    service: Bytes::from_static(b"other"),
                    body: vec![Bytes::new()],
                };
                call.handle_reply(&reply.encode())
            }
            2 => {
                let frames: Vec<Bytes> = op
                    .iter()
                    .map(|b| Bytes::from(vec![*b; usize::from(*b % 3)]))
                    .collect();
                call.handle_reply(&frames)
            }
            3 => {
                now = call.poll_timeout().map_or(now, |d| d.max(now));
                call.handle_timeout(now)
            }
            4 => call.handle_connection_lost(now),
            _ => {
                now += Duration::from_millis(u64::from(arg));
                let deadline = call.poll_timeout();
                let event = call.handle_timeout(now);
                if deadline.is_some_and(|d| now < d) {
                    assert!(event.is_none(), "timed out before the deadline");
                }
                event
            }
        };
        if outcome.is_some() {
            assert!(event.is_none(), "an event after the outcome");
            continue;
        }
        match event {
            Some(CallEvent::Resend { attempt: next }) => {
                assert_eq!(next, attempt + 1, "attempts counted one by one");
                assert!(next <= attempts.max(1), "more attempts than configured");
                attempt = next;
                assert_eq!(
                    call.poll_timeout(),
                    Some(now + timeout),
                    "each attempt gets the full timeout"
                );
            }
            Some(CallEvent::Done(result)) => {
                match &result {
                    Ok(body) => {
                        assert_eq!(kind % 6, 0, "only a valid reply is the answer: {body:?}")
                    }
                    Err(CallError::NoReply { attempts: made }) => {
                        assert_eq!(*made, attempts.max(1));
                        assert_eq!(attempt, attempts.max(1), "gave up before the last attempt");
                    }
                    Err(CallError::WrongService { .. }) => assert_eq!(kind % 6, 1),
                    Err(CallError::Malformed(_)) => assert_eq!(kind % 6, 2),
                    Err(CallError::Interrupted { .. }) => panic!("a 7/MDP call has no parts"),
                }
                assert!(call.is_done());
                outcome = Some(result);
            }
            Some(CallEvent::Part(_)) => panic!("a 7/MDP call has no parts"),
            None => assert!(!call.is_done()),
        }
    }
}
