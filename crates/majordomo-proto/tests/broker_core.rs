//! The broker state machine under simulated time: every rule without a socket.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::broker::{
    BrokerConfig, BrokerCore, BrokerStats, Role, Transmit, WorkersPage, MAX_WORKERS_PAGE,
};
use majordomo_proto::drops::DropReason;
use majordomo_proto::event::Event;
use majordomo_proto::heartbeat::HeartbeatConfig;
use majordomo_proto::mdp::{BrokerMessage, ClientReply, ClientRequest, WorkerMessage};
use majordomo_proto::redelivery::MAX_RETURNS;
use majordomo_proto::{DecodeError, Limits};

const HB: Duration = Duration::from_millis(100);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

struct Sim {
    core: BrokerCore,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self::with(
            BrokerConfig::default()
                .heartbeat(HeartbeatConfig::new(HB, 3))
                .request_expiry(Duration::from_secs(1)),
        )
    }

    fn with(config: BrokerConfig) -> Self {
        let now = Instant::now();
        Self {
            core: BrokerCore::new(now, config),
            now,
        }
    }

    /// A core whose `mmi.stats` answers with [`stats_text`].
    fn with_stats() -> Self {
        let mut s = Self::new();
        s.core = BrokerCore::new(
            s.now,
            BrokerConfig::default().heartbeat(HeartbeatConfig::new(HB, 3)),
        )
        .with_stats_encoder(stats_text);
        s
    }

    /// Worker `w1` of `service` holds request "one" of `client`, whose "two" waits behind it.
    fn w1_holds_one_with_two_queued(&mut self, client: &str, service: &str) {
        self.ready("w1", service);
        self.client(client, service, "one");
        self.client(client, service, "two");
        assert_eq!(requests(&self.drain()), [("w1".into(), "one".into())]);
    }

    fn client(&mut self, id: &str, service: &str, body: &str) {
        let frames = ClientRequest::new(b(service), vec![b(body)]).encode();
        self.core.handle_message(self.now, &b(id), &frames).unwrap();
    }

    fn worker(&mut self, id: &str, msg: WorkerMessage) {
        self.core
            .handle_message(self.now, &b(id), &msg.encode())
            .unwrap();
    }

    fn ready(&mut self, id: &str, service: &str) {
        self.worker(
            id,
            WorkerMessage::Ready {
                service: b(service),
            },
        );
    }

    fn reply(&mut self, worker: &str, client: &str, body: &str) {
        self.worker(
            worker,
            WorkerMessage::Reply {
                client: b(client),
                body: vec![b(body)],
            },
        );
    }

    fn drain(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.core.poll_transmit()).collect()
    }

    /// Steps simulated time deadline by deadline up to `until`, collecting what was sent.
    fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        let until = self.now + by;
        let mut out = self.drain();
        for _ in 0..10_000 {
            let next = self.core.poll_timeout();
            if next > until {
                break;
            }
            self.now = next.max(self.now);
            self.core.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = until;
        out
    }
}

fn to_worker(t: &Transmit) -> (String, BrokerMessage) {
    assert_eq!(t.role, Role::Worker);
    let msg = BrokerMessage::decode(&t.frames[1..], &Limits::default()).unwrap();
    (String::from_utf8_lossy(&t.frames[0]).into_owned(), msg)
}

fn to_client(t: &Transmit) -> (String, ClientReply) {
    assert_eq!(t.role, Role::Client);
    let msg = ClientReply::decode(&t.frames[1..], &Limits::default()).unwrap();
    (String::from_utf8_lossy(&t.frames[0]).into_owned(), msg)
}

fn requests(ts: &[Transmit]) -> Vec<(String, String)> {
    ts.iter()
        .filter(|t| t.role == Role::Worker)
        .filter_map(|t| match to_worker(t) {
            (w, BrokerMessage::Request { body, .. }) => {
                Some((w, String::from_utf8_lossy(&body[0]).into_owned()))
            }
            _ => None,
        })
        .collect()
}

fn replies(ts: &[Transmit]) -> Vec<(String, String)> {
    ts.iter()
        .filter(|t| t.role == Role::Client)
        .map(|t| {
            let (c, r) = to_client(t);
            (c, String::from_utf8_lossy(&r.body[0]).into_owned())
        })
        .collect()
}

#[test]
fn request_is_routed_and_reply_returns_to_its_client() {
    let mut s = Sim::new();
    s.ready("w1", "echo");
    s.client("c1", "echo", "hi");
    let out = s.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].frames,
        vec![
            b("w1"),
            b(""),
            b("MDPW01"),
            Bytes::from_static(&[2]),
            b("c1"),
            b(""),
            b("hi")
        ]
    );
    s.reply("w1", "c1", "hi back");
    let out = s.drain();
    assert_eq!(
        out[0].frames,
        vec![b("c1"), b(""), b("MDPC01"), b("echo"), b("hi back")]
    );
}

#[test]
fn requests_queue_until_a_worker_registers() {
    let mut s = Sim::new();
    s.client("c1", "late", "1");
    s.client("c2", "late", "2");
    assert!(s.drain().is_empty());
    assert_eq!(s.core.stats().queued, 2);
    s.ready("w1", "late");
    assert_eq!(requests(&s.drain()), [("w1".into(), "1".into())]);
    s.reply("w1", "c1", "r1");
    let out = s.drain();
    assert_eq!(replies(&out), [("c1".into(), "r1".into())]);
    assert_eq!(requests(&out), [("w1".into(), "2".into())]);
}

#[test]
fn stats_give_each_service_the_age_of_its_oldest_queued_request() {
    let mut s = Sim::new();
    s.client("c1", "late", "1");
    s.advance(Duration::from_millis(200));
    s.client("c1", "late", "2");
    s.client("c2", "late", "3");
    s.advance(Duration::from_millis(300));
    s.core.handle_timeout(s.now);
    let oldest = |s: &Sim| s.core.stats().per_service[0].oldest_queued_ms;
    assert_eq!(oldest(&s), 500);
    // The oldest goes to the first worker; the next oldest arrived 300 ms ago.
    s.ready("w1", "late");
    assert_eq!(requests(&s.drain()), [("w1".into(), "1".into())]);
    assert_eq!(oldest(&s), 300);
    s.ready("w2", "late");
    s.ready("w3", "late");
    s.drain();
    assert_eq!((s.core.stats().per_service[0].queued, oldest(&s)), (0, 0));
}

#[test]
fn a_draining_broker_serves_what_it_holds_and_drops_new_requests() {
    let mut s = Sim::new();
    s.ready("w1", "echo");
    s.client("c1", "echo", "in flight");
    s.client("c2", "echo", "queued");
    assert_eq!(requests(&s.drain()), [("w1".into(), "in flight".into())]);
    s.core.drain();
    assert!(s.core.is_draining() && !s.core.is_drained());
    s.client("c3", "echo", "too late");
    assert!(s.drain().is_empty(), "no answer, no dispatch");
    let stats = s.core.stats();
    assert_eq!((stats.rejected, stats.queued, stats.draining), (1, 1, true));
    // mmi.* is still answered, so an operator can watch the drain.
    s.client("c4", "mmi.service", "echo");
    assert_eq!(s.drain().len(), 1);
    s.reply("w1", "c1", "r1");
    let out = s.drain();
    assert_eq!(replies(&out), [("c1".into(), "r1".into())]);
    assert_eq!(requests(&out), [("w1".into(), "queued".into())]);
    s.reply("w1", "c2", "r2");
    assert_eq!(replies(&s.drain()), [("c2".into(), "r2".into())]);
    assert!(s.core.is_drained());
}

#[test]
fn idle_workers_are_used_least_recently_used_first() {
    let mut s = Sim::new();
    for w in ["w1", "w2", "w3"] {
        s.ready(w, "svc");
    }
    let mut order = Vec::new();
    for round in 0..6 {
        let c = format!("c{round}");
        s.client(&c, "svc", "x");
        let (w, _) = requests(&s.drain()).pop().unwrap();
        s.reply(&w, &c, "y");
        s.drain();
        order.push(w);
    }
    assert_eq!(order, ["w1", "w2", "w3", "w1", "w2", "w3"]);
}

#[test]
fn clients_are_served_round_robin() {
    let mut s = Sim::new();
    for i in 0..3 {
        s.client("greedy", "svc", &format!("g{i}"));
    }
    s.client("polite", "svc", "p0");
    s.ready("w1", "svc");
    let mut served = Vec::new();
    for _ in 0..4 {
        let out = s.drain();
        let req = requests(&out);
        let body = req[0].1.clone();
        let client = if body.starts_with('g') {
            "greedy"
        } else {
            "polite"
        };
        served.push(body);
        s.reply("w1", client, "ok");
    }
    assert_eq!(served, ["g0", "p0", "g1", "g2"]);
}

#[test]
fn workers_get_heartbeats_and_silent_ones_are_purged() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    s.ready("w2", "svc");
    s.drain();
    let mut hb_w1 = 0;
    // w2 keeps heartbeating, w1 stays silent.
    for _ in 0..10 {
        let out = s.advance(HB / 2);
        hb_w1 += out
            .iter()
            .filter(|t| to_worker(t) == ("w1".into(), BrokerMessage::Heartbeat))
            .count();
        s.worker("w2", WorkerMessage::Heartbeat);
    }
    assert!(hb_w1 >= 2, "w1 got {hb_w1} heartbeats");
    let stats = s.core.stats();
    assert_eq!(stats.workers, 1);
    assert_eq!(stats.purged, 1);
    assert!(s.core.has_worker(b"svc"));
    // The purged worker is a stranger now: its heartbeat gets DISCONNECT.
    s.worker("w1", WorkerMessage::Heartbeat);
    assert_eq!(
        s.drain().iter().map(to_worker).collect::<Vec<_>>(),
        [("w1".into(), BrokerMessage::Disconnect)]
    );
}

#[test]
fn busy_worker_that_dies_has_its_request_served_by_another_once() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    s.client("c1", "svc", "job");
    assert_eq!(requests(&s.drain()), [("w1".into(), "job".into())]);
    s.ready("w2", "svc");
    s.drain();
    // w1 heartbeats while busy (as ours do), so it is held to liveness; then it goes silent
    // while busy; w2 heartbeats.
    s.advance(HB / 2);
    s.worker("w1", WorkerMessage::Heartbeat);
    s.worker("w2", WorkerMessage::Heartbeat);
    let mut redelivered = Vec::new();
    for _ in 0..10 {
        redelivered.extend(requests(&s.advance(HB / 2)));
        s.worker("w2", WorkerMessage::Heartbeat);
    }
    assert_eq!(redelivered, [("w2".into(), "job".into())]);
    s.reply("w2", "c1", "done");
    assert_eq!(replies(&s.drain()), [("c1".into(), "done".into())]);
    // The frozen w1 wakes up and replies late: not delivered, w1 is told DISCONNECT.
    s.reply("w1", "c1", "late");
    let out = s.drain();
    assert!(replies(&out).is_empty());
    assert_eq!(
        out.iter().map(to_worker).collect::<Vec<_>>(),
        [("w1".into(), BrokerMessage::Disconnect)]
    );
    assert_eq!(s.core.stats().replies, 1);
}

#[test]
fn worker_disconnect_requeues_and_gets_nothing_more() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    s.client("c1", "svc", "job");
    s.drain();
    s.worker("w1", WorkerMessage::Disconnect);
    assert!(
        s.drain().is_empty(),
        "no command after a worker's DISCONNECT"
    );
    assert_eq!(s.core.stats().queued, 1);
    s.ready("w2", "svc");
    assert_eq!(requests(&s.drain()), [("w2".into(), "job".into())]);
}

#[test]
fn request_is_abandoned_after_max_deliveries() {
    let mut s = Sim::new();
    s.client("c1", "svc", "poison");
    for i in 0..3 {
        let w = format!("w{i}");
        s.ready(&w, "svc");
        assert_eq!(requests(&s.drain()).len(), 1);
        // It took the request (a heartbeat since), then left: as this crate's worker does when
        // its handler fails.
        s.worker(&w, WorkerMessage::Heartbeat);
        s.worker(&w, WorkerMessage::Disconnect);
    }
    let stats = s.core.stats();
    assert_eq!((stats.abandoned, stats.queued, stats.requeued), (1, 0, 2));
}

#[test]
fn a_worker_leaving_after_its_reply_gives_back_the_request_it_was_handed_meanwhile() {
    // With one delivery allowed, a counted hand-out would abandon the request.
    let mut s = Sim::with(BrokerConfig::default().max_deliveries(1));
    s.w1_holds_one_with_two_queued("c1", "svc");
    // w1 answers and says DISCONNECT at once; the broker hands it "two" in between.
    s.reply("w1", "c1", "one!");
    assert_eq!(requests(&s.drain()), [("w1".into(), "two".into())]);
    s.worker("w1", WorkerMessage::Disconnect);
    s.ready("w2", "svc");
    assert_eq!(requests(&s.drain()), [("w2".into(), "two".into())]);
    s.reply("w2", "c1", "two!");
    assert_eq!(replies(&s.drain()), [("c1".into(), "two!".into())]);
    let stats = s.core.stats();
    assert_eq!((stats.abandoned, stats.requeued, stats.replies), (0, 1, 2));
}

#[test]
fn a_disconnect_handled_with_the_reply_before_transmits_are_taken_gets_no_request() {
    let mut s = Sim::new();
    s.w1_holds_one_with_two_queued("c1", "svc");
    // The answer and the DISCONNECT after it come in one batch, with a request between them:
    // neither "two" nor "three" goes to w1.
    s.reply("w1", "c1", "one!");
    s.client("c2", "svc", "three");
    s.worker("w1", WorkerMessage::Disconnect);
    assert_eq!(replies(&s.drain()), [("c1".into(), "one!".into())]);
    s.ready("w2", "svc");
    assert_eq!(requests(&s.drain()), [("w2".into(), "two".into())]);
    assert_eq!(s.core.stats().requeued, 0);
}

#[test]
fn a_request_given_back_unstarted_too_often_is_abandoned() {
    let mut s = Sim::new();
    s.client("c1", "svc", "bounced");
    for i in 0..=MAX_RETURNS {
        let w = format!("w{i}");
        s.ready(&w, "svc");
        assert_eq!(requests(&s.drain()).len(), 1, "{w}");
        s.worker(&w, WorkerMessage::Disconnect);
    }
    let stats = s.core.stats();
    assert_eq!(
        (stats.abandoned, stats.queued, stats.requeued),
        (1, 0, u64::from(MAX_RETURNS))
    );
}

#[test]
fn unexpected_commands_get_disconnect() {
    let cases: Vec<(&str, Vec<WorkerMessage>)> = vec![
        (
            "reply before ready",
            vec![WorkerMessage::Reply {
                client: b("c"),
                body: vec![b("x")],
            }],
        ),
        ("heartbeat before ready", vec![WorkerMessage::Heartbeat]),
        (
            "mmi service",
            vec![WorkerMessage::Ready {
                service: b("mmi.service"),
            }],
        ),
        (
            "second ready",
            vec![
                WorkerMessage::Ready { service: b("a") },
                WorkerMessage::Ready { service: b("a") },
            ],
        ),
        (
            "reply while idle",
            vec![
                WorkerMessage::Ready { service: b("a") },
                WorkerMessage::Reply {
                    client: b("c"),
                    body: vec![b("x")],
                },
            ],
        ),
    ];
    for (name, msgs) in cases {
        let mut s = Sim::new();
        for m in msgs {
            s.worker("w", m);
        }
        let out = s.drain();
        assert_eq!(
            out.iter().map(to_worker).collect::<Vec<_>>(),
            [("w".into(), BrokerMessage::Disconnect)],
            "{name}"
        );
        assert_eq!(s.core.stats().workers, 0, "{name}");
        assert_eq!(s.core.stats().protocol_errors, 1, "{name}");
    }
}

#[test]
fn reply_with_wrong_client_disconnects_and_requeues() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    s.client("c1", "svc", "job");
    s.drain();
    s.reply("w1", "c2", "forged");
    let out = s.drain();
    assert!(replies(&out).is_empty());
    assert_eq!(s.core.stats().queued, 1);
    s.ready("w2", "svc");
    assert_eq!(requests(&s.drain()), [("w2".into(), "job".into())]);
}

#[test]
fn invalid_messages_are_dropped_and_invalid_workers_removed() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    let err = s.core.handle_message(
        s.now,
        &b("w1"),
        &[b(""), b("MDPW01"), Bytes::from_static(&[9])],
    );
    assert_eq!(err, Err(DecodeError::UnknownCommand(9)));
    assert_eq!(
        s.drain().iter().map(to_worker).collect::<Vec<_>>(),
        [("w1".into(), BrokerMessage::Disconnect)]
    );
    // From a stranger: dropped, nothing sent.
    let err = s.core.handle_message(s.now, &b("x"), &[b("junk")]);
    assert!(err.is_err());
    assert!(s.drain().is_empty());
    assert_eq!(s.core.stats().protocol_errors, 2);
}

#[test]
fn mmi_service_codes() {
    let mut s = Sim::new();
    s.ready("w1", "echo");
    s.client("c", "mmi.service", "echo");
    s.client("c", "mmi.service", "nope");
    s.client("c", "mmi.other", "x");
    let out = s.drain();
    let got: Vec<(String, String)> = out
        .iter()
        .map(|t| {
            let (_, r) = to_client(t);
            (
                String::from_utf8_lossy(&r.service).into_owned(),
                String::from_utf8_lossy(&r.body[0]).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("mmi.service".into(), "200".into()),
            ("mmi.service".into(), "404".into()),
            ("mmi.other".into(), "501".into())
        ]
    );
    // A worker past its liveness is not "live": 404 even before the periodic purge ran.
    s.now += HB * 4;
    s.client("c", "mmi.service", "echo");
    let (_, r) = to_client(&s.drain()[0]);
    assert_eq!(r.body[0].as_ref(), b"404");
}

/// A stand-in for the driver's JSON: a few counters and the service names, as text.
fn stats_text(stats: &BrokerStats) -> Bytes {
    let names: Vec<String> = stats
        .per_service
        .iter()
        .map(|s| {
            format!(
                "{}:{}:{}",
                String::from_utf8_lossy(&s.name),
                s.idle_workers,
                s.queued
            )
        })
        .collect();
    Bytes::from(format!(
        "requests={} replies={} workers={} queued={} services={}",
        stats.requests,
        stats.replies,
        stats.workers,
        stats.queued,
        names.join(",")
    ))
}

#[test]
fn mmi_stats_answers_200_and_the_stats_as_the_driver_encodes_them() {
    let mut s = Sim::with_stats();
    s.ready("w1", "echo");
    s.client("c", "nobody", "queued");
    s.client("c", "mmi.stats", "");
    let out = s.drain();
    let (_, r) = to_client(out.last().expect("a reply"));
    assert_eq!(r.service.as_ref(), b"mmi.stats");
    assert_eq!(r.body[0].as_ref(), b"200");
    // As of the request, which is counted apart from the client requests.
    assert_eq!(
        r.body[1].as_ref(),
        b"requests=1 replies=0 workers=1 queued=1 services=echo:1:0,nobody:0:1"
    );
    assert_eq!(s.core.stats().mmi_requests, 1);
}

#[test]
fn what_is_queued_goes_before_the_next_request_of_a_worker_that_answered_meanwhile() {
    // A driver that adds to the `mmi.stats` reply (a Binary Star pair's status) takes the
    // `queued_transmits` first messages, the reply the last of them.
    let mut s = Sim::with_stats();
    s.w1_holds_one_with_two_queued("c", "echo");
    s.reply("w1", "c", "one!");
    s.client("c", "mmi.stats", "");
    let queued = s.core.queued_transmits();
    assert_eq!(queued, 2, "the answer and the stats");
    let first: Vec<Transmit> = (0..queued)
        .map(|_| s.core.poll_transmit().expect("queued"))
        .collect();
    let (_, r) = to_client(first.last().expect("the stats"));
    assert_eq!(r.service.as_ref(), b"mmi.stats");
    assert_eq!(requests(&s.drain()), [("w1".into(), "two".into())]);
}

#[test]
fn mmi_stats_without_an_encoder_is_not_implemented() {
    let mut s = Sim::new();
    s.client("c", "mmi.stats", "");
    let (_, r) = to_client(&s.drain()[0]);
    assert_eq!(r.body, [b("501")]);
}

#[test]
fn mmi_service_with_an_empty_body_is_not_found() {
    // The decoders refuse a request without a body frame, but `handle_client` takes any
    // `ClientRequest`: one naming no service finds none (8/MMI "404"), and the broker goes on.
    let mut s = Sim::new();
    s.ready("w", "echo");
    s.core.handle_client(
        s.now,
        &b("c"),
        ClientRequest::new(b("mmi.service"), Vec::new()),
    );
    let out = s.drain();
    let (id, r) = to_client(out.last().expect("a reply"));
    assert_eq!(
        (id.as_str(), r.service.as_ref()),
        ("c", &b"mmi.service"[..])
    );
    assert_eq!(r.body, [b("404")]);
    s.client("c", "mmi.service", "echo");
    let (_, r) = to_client(&s.drain()[0]);
    assert_eq!(r.body, [b("200")]);
    let stats = s.core.stats();
    assert_eq!(
        (stats.requests, stats.replies, stats.mmi_requests),
        (0, 0, 2)
    );
}

#[test]
fn the_core_reports_drops_decode_errors_and_latencies_as_events() {
    let mut s = Sim::new();
    s.ready("w", "echo");
    s.client("c", "echo", "x");
    s.drain();
    s.now += Duration::from_millis(7);
    s.reply("w", "c", "y");
    s.drain();
    let _ = s.core.handle_message(s.now, &b("z"), &[b(""), b("nope")]);
    s.client("c", "nobody", "x");
    // Past the expiry and the services' grace.
    s.advance(Duration::from_secs(2) + BrokerConfig::default().service_idle_grace);
    let events: Vec<Event> = std::iter::from_fn(|| s.core.poll_event()).collect();
    assert!(
        events.contains(&Event::Replied {
            service: b("echo"),
            latency: Duration::from_millis(7)
        }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::ProtocolError {
            kind: "unknown_header"
        }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Dropped {
            reason: DropReason::NoWorker
        }),
        "{events:?}"
    );
    // Both services are forgotten: the worker was purged, the request expired.
    for service in ["echo", "nobody"] {
        assert!(
            events.contains(&Event::ServiceForgotten {
                service: b(service)
            }),
            "{events:?}"
        );
    }
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(s.core.poll_event(), None);
}

#[test]
fn queued_requests_expire() {
    let mut s = Sim::new();
    s.client("c1", "nobody", "x");
    s.advance(Duration::from_millis(500));
    s.client("c2", "nobody", "y");
    s.advance(Duration::from_millis(600));
    let stats = s.core.stats();
    assert_eq!((stats.expired, stats.queued), (1, 1));
    s.ready("w", "nobody");
    assert_eq!(requests(&s.drain()), [("w".into(), "y".into())]);
    // A request for a service with a worker waits for it, however long the worker takes.
    s.client("c3", "nobody", "z");
    s.advance(Duration::from_secs(30));
    let stats = s.core.stats();
    assert_eq!((stats.expired, stats.queued, stats.purged), (1, 1, 0));
    // Once its last worker is gone, what it held and what waits expire after the expiry.
    s.worker("w", WorkerMessage::Disconnect);
    assert_eq!(s.core.stats().queued, 2);
    s.advance(Duration::from_millis(1100));
    let stats = s.core.stats();
    assert_eq!((stats.expired, stats.queued, stats.services), (3, 0, 1));
}

/// A broker whose services are forgotten `grace` after they fall idle.
fn with_grace(grace: Duration) -> Sim {
    Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .request_expiry(Duration::from_secs(1))
            .service_idle_grace(grace),
    )
}

fn forgotten(s: &mut Sim) -> Vec<Bytes> {
    std::iter::from_fn(|| s.core.poll_event())
        .filter_map(|e| match e {
            Event::ServiceForgotten { service } => Some(service),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_service_is_forgotten_only_after_its_grace() {
    let grace = Duration::from_secs(10);
    let mut s = with_grace(grace);
    s.client("c", "nobody", "x");
    s.advance(Duration::from_secs(1));
    let stats = s.core.stats();
    assert_eq!((stats.expired, stats.queued, stats.services), (1, 0, 1));
    let entry = majordomo_proto::broker::SERVICE_OVERHEAD + "nobody".len();
    assert_eq!(stats.service_bytes, entry);
    // The deadline is the core's: the driver wakes for it.
    let idle_since = s.now;
    assert!(s.core.poll_timeout() <= idle_since + grace);
    s.advance(grace - HB);
    assert!(forgotten(&mut s).is_empty());
    assert_eq!(s.core.stats().services, 1);
    s.advance(HB * 2);
    assert_eq!(forgotten(&mut s), [b("nobody")]);
    let stats = s.core.stats();
    assert_eq!((stats.services, stats.service_bytes), (0, 0));
}

#[test]
fn a_service_in_use_again_within_its_grace_is_kept() {
    let grace = Duration::from_secs(1);
    let mut s = with_grace(grace);
    s.ready("w1", "echo");
    s.worker("w1", WorkerMessage::Disconnect);
    assert_eq!(s.core.stats().services, 1);
    s.advance(grace / 2);
    // The worker comes back on a new connection, and heartbeats past the first grace.
    s.ready("w2", "echo");
    for _ in 0..(2 * grace.as_millis() / HB.as_millis()) {
        s.advance(HB);
        s.worker("w2", WorkerMessage::Heartbeat);
    }
    assert!(forgotten(&mut s).is_empty());
    assert_eq!(s.core.stats().services, 1);
    // Gone for good: forgotten a grace later.
    s.worker("w2", WorkerMessage::Disconnect);
    s.advance(grace + HB);
    assert_eq!(forgotten(&mut s), [b("echo")]);
    // A request queued within the grace keeps a service too.
    s.client("c", "queue", "x");
    s.advance(Duration::from_secs(1) + grace / 2);
    s.client("c", "queue", "y");
    s.advance(grace);
    assert!(forgotten(&mut s).is_empty());
    assert_eq!(s.core.stats().queued, 0, "the second request expired too");
    s.advance(grace);
    assert_eq!(forgotten(&mut s), [b("queue")]);
}

#[test]
fn a_new_service_takes_the_place_of_the_one_idle_longest_when_the_table_is_full() {
    let mut s = Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .request_expiry(Duration::from_secs(1))
            .service_idle_grace(Duration::from_secs(60))
            .max_services(2),
    );
    s.client("c", "a", "x");
    s.advance(Duration::from_millis(500));
    s.client("c", "b", "x");
    s.advance(Duration::from_secs(1));
    // Both expired, both idle in their grace: the table is full.
    assert_eq!(s.core.stats().services, 2);
    forgotten(&mut s);
    s.client("c", "c", "x");
    assert_eq!(forgotten(&mut s), [b("a")]);
    let stats = s.core.stats();
    assert_eq!((stats.services, stats.queued, stats.rejected), (2, 1, 0));
    // A service in use is never forgotten early: "b" makes room, then the table is full.
    s.client("c", "d", "x");
    assert_eq!(forgotten(&mut s), [b("b")]);
    s.client("c", "e", "x");
    let stats = s.core.stats();
    assert_eq!((stats.services, stats.queued, stats.rejected), (2, 2, 1));
}

#[test]
fn with_no_grace_an_idle_service_is_forgotten_at_once() {
    let mut s = with_grace(Duration::ZERO);
    s.client("c", "nobody", "x");
    s.advance(Duration::from_millis(1100));
    assert_eq!(forgotten(&mut s), [b("nobody")]);
    assert_eq!(s.core.stats().services, 0);
}

#[test]
fn a_busy_worker_never_seen_heartbeating_while_busy_gets_the_busy_timeout() {
    // The Guide's worker API sends nothing while its handler runs.
    let busy_timeout = Duration::from_secs(60);
    let mut s = Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .busy_timeout(busy_timeout),
    );
    s.ready("w1", "svc");
    s.client("c1", "svc", "long job");
    assert_eq!(requests(&s.drain()), [("w1".into(), "long job".into())]);
    // A heartbeat it sent just before the request reached it arrives just after the hand-out:
    // that does not make it a worker that heartbeats while busy.
    s.worker("w1", WorkerMessage::Heartbeat);
    // Far past liveness, well within the busy timeout: still registered, nothing re-queued.
    s.advance(HB * 30);
    let stats = s.core.stats();
    assert_eq!((stats.workers, stats.purged, stats.requeued), (1, 0, 0));
    // Its reply is delivered, once.
    s.reply("w1", "c1", "done");
    assert_eq!(replies(&s.drain()), [("c1".into(), "done".into())]);
    // Idle again, it is held to liveness.
    s.advance(HB * 4);
    assert_eq!(s.core.stats().purged, 1);
}

#[test]
fn a_busy_worker_silent_past_the_busy_timeout_is_purged_and_its_request_requeued() {
    let busy_timeout = Duration::from_secs(5);
    let mut s = Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .busy_timeout(busy_timeout),
    );
    s.ready("w1", "svc");
    s.client("c1", "svc", "job");
    s.drain();
    s.ready("w2", "svc");
    s.drain();
    let mut redelivered = Vec::new();
    for _ in 0..((busy_timeout.as_millis() / (HB / 2).as_millis()) + 4) {
        redelivered.extend(requests(&s.advance(HB / 2)));
        s.worker("w2", WorkerMessage::Heartbeat);
    }
    assert_eq!(redelivered, [("w2".into(), "job".into())]);
    let stats = s.core.stats();
    assert_eq!((stats.purged, stats.requeued), (1, 1));
}

#[test]
fn a_worker_whose_connection_closes_is_removed_at_once_and_its_request_requeued() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    s.client("c1", "svc", "job");
    s.drain();
    s.ready("w2", "svc");
    s.drain();
    let now = s.now;
    s.core.handle_disconnected(now, &b("w1"));
    assert_eq!(requests(&s.drain()), [("w2".into(), "job".into())]);
    let stats = s.core.stats();
    assert_eq!(
        (stats.disconnected, stats.requeued, stats.workers),
        (1, 1, 1)
    );
    // Unknown peers (clients, strangers) are ignored.
    s.core.handle_disconnected(now, &b("c1"));
    assert_eq!(s.core.stats().disconnected, 1);
}

#[test]
fn queues_are_bounded_by_bytes() {
    // Each request below counts REQUEST_OVERHEAD plus its frames (FRAME_OVERHEAD each): a 2-byte client identity, a
    // 1-byte service, a 1-byte body. Each of the two services counts SERVICE_OVERHEAD and its
    // 1-byte name in the total.
    let each =
        majordomo_proto::broker::REQUEST_OVERHEAD + majordomo_proto::broker::FRAME_OVERHEAD + 4;
    let entries = 2 * (majordomo_proto::broker::SERVICE_OVERHEAD + 1);
    let mut s = Sim::with(
        BrokerConfig::default()
            .max_queued_bytes_per_service(3 * each + each / 2)
            .max_queued_bytes(entries + 5 * each + each / 2),
    );
    for i in 0..4 {
        s.client(&format!("c{i}"), "a", "x");
    }
    for i in 0..4 {
        s.client(&format!("d{i}"), "b", "x");
    }
    let stats = s.core.stats();
    assert_eq!(
        stats.queued, 5,
        "three for a, then two for b before the total bound"
    );
    assert_eq!(stats.rejected, 3);
    assert_eq!(stats.queued_bytes, 5 * each);
    assert_eq!(stats.service_bytes, entries);
    assert_eq!(stats.per_service[0].queued, 3);
}

#[test]
fn services_are_bounded_in_number_and_counted_in_bytes_until_forgotten() {
    let mut s = Sim::with(
        BrokerConfig::default()
            .request_expiry(Duration::from_secs(1))
            .service_idle_grace(Duration::ZERO)
            .max_services(3),
    );
    s.ready("w", "echo");
    for i in 0..5 {
        s.client("c", &format!("svc{i}"), "x");
    }
    // The worker's service and two others; the rest are refused.
    let stats = s.core.stats();
    assert_eq!((stats.services, stats.queued, stats.rejected), (3, 2, 3));
    let entry = |name: &str| majordomo_proto::broker::SERVICE_OVERHEAD + name.len();
    assert_eq!(
        stats.service_bytes,
        entry("echo") + entry("svc0") + entry("svc1")
    );
    let dropped: Vec<Event> = std::iter::from_fn(|| s.core.poll_event())
        .filter(|e| matches!(e, Event::Dropped { .. }))
        .collect();
    assert_eq!(
        dropped,
        vec![
            Event::Dropped {
                reason: DropReason::Services
            };
            3
        ]
    );
    // A known service still takes requests at the bound.
    s.client("c", "svc0", "y");
    assert_eq!(s.core.stats().queued, 3);
    // Once expired, their services are forgotten and their bytes given back.
    s.ready("w2", "echo");
    s.advance(Duration::from_millis(1500));
    s.ready("w3", "echo");
    let stats = s.core.stats();
    assert_eq!(stats.services, 1);
    assert_eq!(stats.service_bytes, entry("echo"));
    s.client("c", "svc9", "z");
    assert_eq!(s.core.stats().services, 2);
}

#[test]
fn stats_list_the_busiest_services_and_pages_list_the_rest() {
    use majordomo_proto::broker::{MAX_STATS_PAGE, STATS_TOP_SERVICES};
    let mut s = Sim::with(BrokerConfig::default().request_expiry(Duration::from_secs(60)));
    let n = 2_000;
    for i in 0..n {
        s.client("c", &format!("svc{i:05}"), "x");
    }
    // One service with more queued than any other.
    for _ in 0..3 {
        s.client("c", "busy", "x");
    }
    let stats = s.core.stats();
    assert_eq!(stats.services, n + 1);
    assert_eq!(stats.per_service.len(), STATS_TOP_SERVICES);
    assert_eq!(stats.services_omitted, n + 1 - STATS_TOP_SERVICES);
    assert!(stats.per_service.iter().any(|p| p.name == b("busy")));
    assert!(stats.per_service.windows(2).all(|w| w[0].name < w[1].name));
    // Pages in name order, by prefix.
    let page = s.core.stats_page(b"svc", 10, 5);
    let names: Vec<Bytes> = page.per_service.iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        (10..15)
            .map(|i| b(&format!("svc{i:05}")))
            .collect::<Vec<_>>()
    );
    assert_eq!(page.services_omitted, n + 1 - 5);
    assert_eq!(
        s.core.stats_page(b"", 0, usize::MAX).per_service.len(),
        MAX_STATS_PAGE
    );
    assert_eq!(s.core.stats_page(b"svc01", 0, 1000).per_service.len(), 1000);
    assert_eq!(s.core.stats_page(b"zzz", 0, 10).per_service.len(), 0);
    // Every service, for the API that lists them all.
    assert_eq!(s.core.service_stats().len(), n + 1);
}

#[test]
fn max_wait_drops_requests_that_wait_too_long_even_with_workers() {
    let mut s = Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .max_wait(Some(Duration::from_secs(2))),
    );
    s.ready("w1", "svc");
    s.client("c1", "svc", "first");
    s.client("c2", "svc", "second");
    s.drain();
    for _ in 0..30 {
        s.advance(HB);
        s.worker("w1", WorkerMessage::Heartbeat);
    }
    let stats = s.core.stats();
    assert_eq!((stats.expired, stats.queued), (1, 0));
}

#[test]
fn queue_bounds_drop_new_requests() {
    let mut s = Sim::with(
        BrokerConfig::default()
            .max_queued_per_service(2)
            .max_queued_total(3),
    );
    for i in 0..4 {
        s.client(&format!("c{i}"), "a", "x");
    }
    s.client("d", "b", "x");
    s.client("e", "b", "x");
    let stats = s.core.stats();
    assert_eq!((stats.queued, stats.rejected), (3, 3));
}

#[test]
fn shutdown_disconnects_every_worker() {
    let mut s = Sim::new();
    s.ready("w1", "a");
    s.ready("w2", "b");
    s.drain();
    s.core.shutdown();
    let mut got: Vec<_> = s.drain().iter().map(to_worker).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("w1".into(), BrokerMessage::Disconnect),
            ("w2".into(), BrokerMessage::Disconnect)
        ]
    );
    assert_eq!(s.core.stats().workers, 0);
}

#[test]
fn undeliverable_request_goes_to_another_worker() {
    let mut s = Sim::new();
    s.ready("w1", "svc");
    s.ready("w2", "svc");
    s.client("c", "svc", "job");
    let out = s.drain();
    assert_eq!(requests(&out), [("w1".into(), "job".into())]);
    s.core.handle_undeliverable(s.now, Role::Worker, &b("w1"));
    assert_eq!(requests(&s.drain()), [("w2".into(), "job".into())]);
}

#[test]
fn requests_held_at_shutdown_are_counted_as_dropped_for_drain() {
    let mut s = Sim::new();
    s.ready("w", "busy");
    s.client("c", "busy", "held");
    for i in 0..10 {
        s.client(&format!("c{i}"), "queued", "waits");
    }
    s.core.drain();
    s.drain();
    while s.core.poll_event().is_some() {}
    s.core.shutdown();
    let stats = s.core.stats();
    assert_eq!(
        (stats.dropped_at_shutdown, stats.queued, stats.in_flight),
        (11, 0, 0)
    );
    // Every request is accounted for, after the stop too.
    assert_eq!(
        stats.requests,
        stats.replies
            + stats.expired
            + stats.rejected
            + stats.abandoned
            + stats.dropped_at_shutdown
    );
    let events: Vec<Event> = std::iter::from_fn(|| s.core.poll_event()).collect();
    assert_eq!(
        events,
        [Event::DroppedMany {
            reason: DropReason::Drain,
            count: 11
        }]
    );
    // Stopping again drops nothing more.
    s.core.shutdown();
    assert_eq!(s.core.stats().dropped_at_shutdown, 11);
}

#[test]
fn access_rules_keep_keys_from_calling_or_serving_what_they_may_not() {
    use std::collections::HashSet;

    use majordomo_proto::access::{AccessRule, AccessRules, Pattern, SharedAccess};

    const CLIENT: [u8; 32] = [1; 32];
    const WORKER: [u8; 32] = [2; 32];
    const ROGUE: [u8; 32] = [3; 32];
    let rules = AccessRules::new(vec![
        AccessRule {
            keys: Some(HashSet::from([CLIENT])),
            call: vec![Pattern::parse("echo"), Pattern::parse("mmi.*")],
            serve: vec![],
        },
        AccessRule {
            keys: Some(HashSet::from([WORKER])),
            call: vec![],
            serve: vec![Pattern::parse("echo")],
        },
    ]);
    let access = SharedAccess::new(Some(rules));
    let mut s = Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .access(access.clone()),
    );
    for (id, key) in [("c1", CLIENT), ("w1", WORKER), ("rogue", ROGUE)] {
        s.core.handle_peer_key(&b(id), key);
    }
    // The rogue's READY is answered with DISCONNECT; it never joins.
    s.ready("rogue", "echo");
    let out = s.drain();
    assert!(matches!(
        &out[..],
        [t] if to_worker(t) == ("rogue".into(), BrokerMessage::Disconnect)
    ));
    s.ready("w1", "echo");
    // A peer with no key, and the rogue, may not call: dropped, counted, never dispatched.
    s.client("anonymous", "echo", "x");
    s.client("rogue", "echo", "y");
    s.client("rogue", "mmi.service", "echo");
    assert_eq!(s.drain(), []);
    s.client("c1", "echo", "hi");
    assert_eq!(requests(&s.drain()), [("w1".into(), "hi".into())]);
    let stats = s.core.stats();
    assert_eq!((stats.unauthorized, stats.workers), (4, 1));
    let dropped = std::iter::from_fn(|| s.core.poll_event())
        .filter(|e| {
            matches!(
                e,
                Event::Dropped {
                    reason: DropReason::Unauthorized
                }
            )
        })
        .count();
    assert_eq!(dropped, 3);

    // A reload applies at once; a peer's key is forgotten with its connection.
    s.reply("w1", "c1", "hi");
    assert_eq!(replies(&s.drain()), [("c1".into(), "hi".into())]);
    access.set(None);
    s.client("rogue", "echo", "now");
    assert_eq!(requests(&s.drain()), [("w1".into(), "now".into())]);
    access.set(Some(AccessRules::default()));
    s.core.handle_disconnected(s.now, &b("c1"));
    s.client("c1", "echo", "again");
    assert_eq!(s.core.stats().unauthorized, 5);
    // mmi.workers is refused by the same rules: dropped unanswered, counted apart.
    s.client("rogue", "mmi.workers", "");
    assert_eq!(s.drain(), []);
    let stats = s.core.stats();
    assert_eq!(stats.unauthorized, 6);
    assert_eq!(stats.mmi_requests, 2);
}

#[test]
fn a_worker_heartbeating_slower_than_the_broker_allows_is_explained_and_counted() {
    // The broker: 100 ms x 3. The worker heartbeats every 500 ms: purged at 300 ms of
    // silence, then its HEARTBEAT arrives from a worker the broker no longer knows.
    let mut s = Sim::new();
    s.ready("w1", "echo");
    s.advance(Duration::from_millis(450));
    assert_eq!(s.core.stats().purged, 1);
    while s.core.poll_event().is_some() {}
    s.worker("w1", WorkerMessage::Heartbeat);
    let out = s.drain();
    assert!(matches!(
        &out[..],
        [t] if to_worker(t) == ("w1".into(), BrokerMessage::Disconnect)
    ));
    let stats = s.core.stats();
    assert_eq!((stats.heartbeat_mismatch, stats.protocol_errors), (1, 0));
    let kinds: Vec<Event> = std::iter::from_fn(|| s.core.poll_event()).collect();
    assert!(
        kinds.contains(&Event::ProtocolError {
            kind: "heartbeat_mismatch"
        }),
        "{kinds:?}"
    );
    // A HEARTBEAT from a worker never seen is the plain protocol error it always was.
    s.worker("stranger", WorkerMessage::Heartbeat);
    assert_eq!(s.core.stats().protocol_errors, 1);
    assert_eq!(s.core.stats().heartbeat_mismatch, 1);
}

/// A stand-in for the driver's JSON: each worker as `service/identity/state/state_ms/registered_ms`.
fn workers_text(page: &WorkersPage) -> Bytes {
    let listed: Vec<String> = page
        .per_worker
        .iter()
        .map(|w| {
            format!(
                "{}/{}/{}/{}/{}",
                String::from_utf8_lossy(&w.service),
                String::from_utf8_lossy(&w.identity),
                w.state.as_str(),
                w.state_ms,
                w.registered_ms
            )
        })
        .collect();
    Bytes::from(format!(
        "workers={} omitted={} {}",
        page.workers,
        page.workers_omitted,
        listed.join(",")
    ))
}

fn mmi_workers(s: &mut Sim, body: &str) -> String {
    s.client("ops", "mmi.workers", body);
    let out = s.drain();
    let (id, r) = to_client(out.last().expect("a reply"));
    assert_eq!(
        (id.as_str(), r.service.as_ref()),
        ("ops", &b"mmi.workers"[..])
    );
    assert_eq!(r.body[0].as_ref(), b"200");
    String::from_utf8_lossy(&r.body[1]).into_owned()
}

#[test]
fn mmi_workers_lists_each_worker_idle_or_busy_and_since_when() {
    let mut s = Sim::new();
    s.core = BrokerCore::new(
        s.now,
        BrokerConfig::default().heartbeat(HeartbeatConfig::new(HB, 3)),
    )
    .with_workers_encoder(workers_text);
    s.ready("w2", "echo");
    s.now += Duration::from_millis(10);
    s.ready("w1", "echo");
    s.ready("w3", "billing");
    s.now += Duration::from_millis(20);
    // w2, the least recently used, takes the request.
    s.client("c", "echo", "job");
    assert_eq!(requests(&s.drain()), [("w2".into(), "job".into())]);
    s.now += Duration::from_millis(5);
    assert_eq!(
        mmi_workers(&mut s, ""),
        "workers=3 omitted=0 billing/w3/idle/25/25,echo/w1/idle/25/25,echo/w2/busy/5/35"
    );
    // Its reply makes it idle again, from then on.
    s.reply("w2", "c", "done");
    s.drain();
    s.now += Duration::from_millis(1);
    assert_eq!(
        mmi_workers(&mut s, "prefix=echo"),
        "workers=3 omitted=1 echo/w1/idle/26/26,echo/w2/idle/1/36"
    );
    // Pages count workers, in the same order.
    assert_eq!(
        mmi_workers(&mut s, "offset=1 limit=1"),
        "workers=3 omitted=2 echo/w1/idle/26/26"
    );
    assert_eq!(
        mmi_workers(&mut s, "offset=3 limit=5"),
        "workers=3 omitted=3 "
    );
    // A page is never larger than the cap.
    assert!(s.core.workers_page(b"", 0, usize::MAX).per_worker.len() <= MAX_WORKERS_PAGE);
    // A worker gone is gone from the list.
    s.core.handle_disconnected(s.now, &b("w1"));
    assert_eq!(
        mmi_workers(&mut s, "prefix=echo"),
        "workers=2 omitted=1 echo/w2/idle/1/36"
    );
    // Counted apart from the client requests and replies.
    let stats = s.core.stats();
    assert_eq!(
        (stats.requests, stats.replies, stats.mmi_requests),
        (1, 1, 5)
    );
}

#[test]
fn mmi_workers_without_an_encoder_is_not_implemented() {
    let mut s = Sim::new();
    s.client("c", "mmi.workers", "");
    let (_, r) = to_client(&s.drain()[0]);
    assert_eq!(r.body, [b("501")]);
}

#[test]
fn each_service_counts_its_requests_replies_drops_and_rejections() {
    let mut s = Sim::with(
        BrokerConfig::default()
            .heartbeat(HeartbeatConfig::new(HB, 3))
            .request_expiry(Duration::from_secs(1))
            .max_queued_per_service(1),
    );
    s.ready("w", "echo");
    s.client("c", "echo", "1");
    s.drain();
    s.reply("w", "c", "1");
    // The answer sent, the worker is handed the next request.
    s.drain();
    s.client("c", "echo", "2");
    // The worker holds 2; 3 is queued; 4 finds the queue full.
    s.client("c", "echo", "3");
    s.client("c", "echo", "4");
    // No worker for "nobody": its request expires.
    s.client("c", "nobody", "x");
    s.client("c", "mmi.service", "echo");
    s.drain();
    s.advance(Duration::from_millis(1100));
    let per: Vec<(String, u64, u64, u64, u64)> = s
        .core
        .service_stats()
        .into_iter()
        .map(|st| {
            (
                String::from_utf8_lossy(&st.name).into_owned(),
                st.requests,
                st.replies,
                st.dropped,
                st.rejected,
            )
        })
        .collect();
    let echo = per.iter().find(|p| p.0 == "echo").expect("echo");
    assert_eq!(echo, &("echo".into(), 3, 1, 0, 1));
    let nobody = per
        .iter()
        .find(|p| p.0 == "nobody")
        .expect("nobody, in its grace");
    assert_eq!(nobody, &("nobody".into(), 1, 0, 1, 0));
    let stats = s.core.stats();
    assert_eq!(
        (
            stats.requests,
            stats.replies,
            stats.expired,
            stats.rejected,
            stats.mmi_requests
        ),
        (5, 1, 1, 1, 1)
    );
    // The accounting identity holds without the mmi.* request.
    assert_eq!(
        stats.requests,
        stats.replies
            + stats.queued as u64
            + stats.in_flight as u64
            + stats.expired
            + stats.rejected
            + stats.abandoned
            + stats.dropped_at_shutdown
    );
}

#[test]
fn a_worker_named_by_the_guard_is_listed_with_its_address() {
    let mut s = Sim::new();
    let address: std::net::SocketAddr = "203.0.113.7:40122".parse().unwrap();
    let named = Bytes::from(majordomo_proto::peer::assigned_identity(15, address));
    let ready = WorkerMessage::Ready { service: b("echo") };
    s.core
        .handle_message(s.now, &named, &ready.encode())
        .unwrap();
    s.ready("chose-its-own", "echo");
    let page = s.core.workers_page(b"", 0, 10);
    let addresses: Vec<(Bytes, Option<String>)> = page
        .per_worker
        .iter()
        .map(|w| (w.identity.clone(), w.address.clone()))
        .collect();
    assert_eq!(
        addresses,
        [
            (named, Some("203.0.113.7:40122".to_owned())),
            (b("chose-its-own"), None),
        ]
    );
}
