#![no_main]
//! Fuzzes the Binary Star state machine: state messages of any bytes, client requests and time
//! steps in any order. Nothing panics; a fatal error leaves the state as it was; a server that
//! never heard an active peer, never got a client request past the peer's expiry, and is the
//! backup is never active.

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use majordomo_proto::bstar::{BinaryStar, BinaryStarConfig, Event, Outcome, Role, State};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 { Role::Primary } else { Role::Backup };
    let mut now = Instant::now();
    let mut fsm = BinaryStar::new(role, now, BinaryStarConfig::default());
    let mut heard_active = false;
    for chunk in rest.chunks(2) {
        let (op, arg) = (chunk[0], chunk.get(1).copied().unwrap_or(0));
        match op % 4 {
            0 => now += Duration::from_millis(u64::from(arg) * 20),
            1 => {
                fsm.handle_timeout(now);
                assert!(fsm.poll_timeout() > now, "the next heartbeat is ahead");
                let _ = fsm.poll_publish();
            }
            2 => {
                let before = fsm.state();
                match fsm.handle_peer_message(now, &[arg]) {
                    Ok(Err(_)) => assert_eq!(fsm.state(), before),
                    Ok(Ok(outcome)) => {
                        assert_eq!(outcome, Outcome::Noted);
                        heard_active |= State::decode(&[arg]) == Ok(State::Active);
                    }
                    Err(_) => assert_eq!(fsm.state(), before),
                }
            }
            _ => {
                let outcome = fsm.handle(now, Event::ClientRequest);
                assert_eq!(outcome == Ok(Outcome::Serve), fsm.is_active());
            }
        }
        if role == Role::Backup && !heard_active {
            assert_ne!(fsm.state(), State::Active);
        }
    }
});
