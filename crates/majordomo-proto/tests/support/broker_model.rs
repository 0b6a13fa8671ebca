//! A model run of the broker state machine: arbitrary sequences of peer messages and time steps,
//! with its invariants checked after every step: no panic; queues within their bounds; every
//! request answered, queued, in flight, expired, rejected or abandoned; no request answered twice.
//! Shared by the property test `broker_model.rs` and the fuzz target `broker_core`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::broker::{BrokerConfig, BrokerCore, Role};
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::mdp::{BrokerMessage, ClientReply, ClientRequest, WorkerMessage};
use majordomo_proto::Limits;

const SERVICES: [&[u8]; 3] = [b"a", b"b", b"mmi.service"];

/// Runs the operations encoded in `data` (two bytes each) and panics on a broken invariant.
pub fn run(data: &[u8]) {
    let config = BrokerConfig::default()
        .heartbeat(HeartbeatConfig::new(Duration::from_millis(100), 3))
        .request_expiry(Duration::from_millis(700))
        .max_queued_per_service(8)
        .max_queued_total(12)
        .max_deliveries(2)
        .limits(Limits::default());
    let mut now = Instant::now();
    let mut core = BrokerCore::new(now, config.clone());
    let mut next_body = 0u64;
    // What each worker was last handed: (client, body).
    let mut assigned: HashMap<u8, (Bytes, Vec<Bytes>)> = HashMap::new();
    let mut answered: HashSet<Bytes> = HashSet::new();
    let limits = Limits::default();

    for op in data.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        let worker = Bytes::from(vec![b'w', arg % 6]);
        match kind % 8 {
            0 => {
                let client = Bytes::from(vec![b'c', arg % 4]);
                let service = SERVICES[usize::from(arg / 4 % 3)];
                next_body += 1;
                let body = if service == b"mmi.service" {
                    Bytes::from_static(b"a")
                } else {
                    Bytes::from(next_body.to_string())
                };
                core.handle_client(
                    now,
                    &client,
                    ClientRequest::new(Bytes::from_static(service), vec![body]),
                );
            }
            1 => core.handle_worker(
                now,
                &worker,
                WorkerMessage::Ready {
                    service: Bytes::from_static(SERVICES[usize::from(arg / 6 % 3)]),
                },
            ),
            2 => {
                let (client, body) = assigned
                    .get(&(arg % 6))
                    .cloned()
                    .unwrap_or((Bytes::from_static(b"c0"), vec![Bytes::from_static(b"x")]));
                core.handle_worker(now, &worker, WorkerMessage::Reply { client, body });
            }
            3 => core.handle_worker(now, &worker, WorkerMessage::Heartbeat),
            4 => core.handle_worker(now, &worker, WorkerMessage::Disconnect),
            5 => {
                let until = now + Duration::from_millis(u64::from(arg) * 10);
                for _ in 0..1000 {
                    let next = core.poll_timeout();
                    if next > until {
                        break;
                    }
                    now = next.max(now);
                    core.handle_timeout(now);
                }
                now = until;
            }
            6 => core.handle_undeliverable(now, Role::Worker, &worker),
            _ => {
                let frames: Vec<Bytes> = op
                    .iter()
                    .map(|b| Bytes::from(vec![*b; usize::from(*b % 4)]))
                    .collect();
                let _ = core.handle_message(now, &worker, &frames);
            }
        }
        while let Some(t) = core.poll_transmit() {
            assert!(!t.frames.is_empty());
            match t.role {
                Role::Worker => {
                    let message = BrokerMessage::decode(&t.frames[1..], &limits)
                        .expect("broker sends valid commands");
                    if let BrokerMessage::Request { client, body } = message {
                        let id = t.frames[0].last().copied().unwrap_or(0);
                        assigned.insert(id, (client, body));
                    }
                }
                Role::Client => {
                    let reply = ClientReply::decode(&t.frames[1..], &limits)
                        .expect("broker sends valid replies");
                    if reply.service.as_ref() != b"mmi.service" {
                        assert!(
                            answered.insert(reply.body[0].clone()),
                            "request answered twice"
                        );
                    }
                }
            }
        }
        let s = core.stats();
        // New requests stop at the bound; requests whose worker went away are re-queued past it
        // (they were accepted), so the queue can exceed it by at most one per worker (6 here).
        assert!(
            s.queued <= config.max_queued_total + 6,
            "queue bound broken: {s:?}"
        );
        assert_eq!(
            s.requests,
            s.replies + s.queued as u64 + s.in_flight as u64 + s.expired + s.rejected + s.abandoned,
            "a request went missing: {s:?}"
        );
    }
}
