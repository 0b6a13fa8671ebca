//! `--metrics-listen ADDR`: Prometheus text format at `/metrics` and a probe at `/healthz`.
//!
//! The libraries record through the `metrics` facade (drops by reason, protocol errors by kind,
//! request latency per service); this binary installs the Prometheus recorder and, at each
//! scrape, reads the server's stats through its handle and records them too (counters as
//! absolute values, gauges), with the guard's counters and the process's basics. Reading the
//! stats is also the health check: the server's own loop answers it between two turns, so
//! `/healthz` says 200 only while that loop is turning, and 503 while the broker drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use majordomo_broker::{
    error_kinds, BrokerHandle, BrokerStats, DecodeError, DropReason, GuardStatsHandle,
};
use majordomo_pirate::{QueueHandle, QueueStats};
use majordomo_zmtp::Rule;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// How long `/healthz` and `/metrics` wait for the server's loop to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the recorder's histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets in seconds: sub-millisecond on loopback up to the minute a slow handler may
/// take.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// What the server's loop said when asked for its stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// It answered and takes requests.
    Serving,
    /// It answered and is draining.
    Draining,
    /// It did not answer within [`PROBE_TIMEOUT`], or it has stopped.
    Unresponsive,
}

/// A server whose stats can be recorded: the broker or a Pirate queue, with its guards.
pub(crate) trait Source: Send + Sync + 'static {
    /// Reads the stats through the server's handle, records them, and says how it is.
    fn refresh(&self) -> impl Future<Output = Health> + Send;

    /// Registers the labelled counters the server records as things happen, each at zero, so
    /// that every one is on the page from the start (a rate over a series that appears only at
    /// its first event misses that event). None by default.
    fn zero(&self) {}
}

/// The broker's handle and guards.
pub(crate) struct BrokerSource {
    pub(crate) handle: BrokerHandle,
    pub(crate) guards: Vec<GuardStatsHandle>,
    /// Whether the broker is one of a Binary Star pair, which drops requests while passive.
    pub(crate) pair: bool,
}

impl Source for BrokerSource {
    fn zero(&self) {
        let mut reasons: Vec<&'static str> = DropReason::ALL.iter().map(|r| r.label()).collect();
        if self.pair {
            reasons.push("not_active");
        }
        for reason in reasons {
            counter!("majordomo_dropped_requests_total", "reason" => reason).increment(0);
        }
        for kind in DecodeError::KINDS.iter().chain(&error_kinds::ALL) {
            counter!("majordomo_protocol_errors_total", "kind" => *kind).increment(0);
        }
    }

    async fn refresh(&self) -> Health {
        record_guards(&self.guards);
        match tokio::time::timeout(PROBE_TIMEOUT, self.handle.stats()).await {
            Ok(Some(stats)) => {
                record_broker(&stats);
                if stats.draining {
                    Health::Draining
                } else {
                    Health::Serving
                }
            }
            _ => Health::Unresponsive,
        }
    }
}

/// A Pirate queue's handle and guards.
pub(crate) struct QueueSource {
    pub(crate) handle: QueueHandle,
    pub(crate) guards: Vec<GuardStatsHandle>,
}

impl Source for QueueSource {
    async fn refresh(&self) -> Health {
        record_guards(&self.guards);
        match tokio::time::timeout(PROBE_TIMEOUT, self.handle.stats()).await {
            Ok(Some(stats)) => {
                record_queue(&stats);
                Health::Serving
            }
            _ => Health::Unresponsive,
        }
    }
}

/// A worker process: its handlers record their requests as they finish
/// ([`crate::cmd::worker`]); there is no loop of its own to ask, so it is healthy while the
/// process answers.
pub(crate) struct WorkerSource;

impl Source for WorkerSource {
    async fn refresh(&self) -> Health {
        Health::Serving
    }
}

/// A Titanic server's handle.
pub(crate) struct TitanicSource {
    pub(crate) handle: majordomo_titanic::TitanicHandle,
}

impl Source for TitanicSource {
    async fn refresh(&self) -> Health {
        match tokio::time::timeout(PROBE_TIMEOUT, self.handle.stats()).await {
            Ok(Some(stats)) => {
                record_titanic(&stats);
                Health::Serving
            }
            _ => Health::Unresponsive,
        }
    }
}

/// Installs the Prometheus recorder (for the whole process) and serves `/metrics` and
/// `/healthz` on `addr` until the process ends. Returns the address bound.
pub(crate) async fn serve(addr: SocketAddr, source: impl Source) -> Result<SocketAddr> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("majordomo_request_duration_seconds".to_owned()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("majordomo_worker_request_duration_seconds".to_owned()),
            LATENCY_BUCKETS,
        )?
        // A service gone for five minutes leaves the page, its gauges and its latency (the
        // broker looks its latency series up again each minute, so a live one comes back).
        .idle_timeout(
            MetricKindMask::GAUGE | MetricKindMask::HISTOGRAM,
            Some(Duration::from_secs(300)),
        )
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    source.zero();
    gauge!("majordomo_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let bound = listener.local_addr()?;
    // Histogram samples wait in the recorder until upkeep folds them into the buckets: without
    // it they pile up while nobody scrapes.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let state = Arc::new((source, prometheus, started));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let state = state.clone();
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(&state.0, &state.1, state.2, request).await,
                    )
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    tracing::info!(listen = %bound, "metrics at /metrics, health at /healthz");
    Ok(bound)
}

async fn answer<B>(
    source: &impl Source,
    prometheus: &PrometheusHandle,
    started: f64,
    request: Request<B>,
) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            source.refresh().await;
            prometheus.run_upkeep();
            let mut page = prometheus.render();
            page.push_str(&process_metrics(started));
            let mut response = text(StatusCode::OK, page);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => match source.refresh().await {
            Health::Serving => text(StatusCode::OK, "ok\n".into()),
            Health::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
            Health::Unresponsive => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not responding\n".into())
            }
        },
        _ => text(StatusCode::NOT_FOUND, "/metrics or /healthz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Every metric's help text, so that each family on the page has its `# HELP` line.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    let counters = [
        (
            "majordomo_requests_total",
            "Requests received from clients for services (mmi.* counted apart).",
        ),
        (
            "majordomo_replies_total",
            "Replies passed back to clients (answers to mmi.* not included).",
        ),
        (
            "majordomo_mmi_requests_total",
            "mmi.* requests the broker answered itself (status probes, majordomo top) or refused.",
        ),
        (
            "majordomo_expired_total",
            "Requests dropped because their expiry or maximum wait passed.",
        ),
        (
            "majordomo_rejected_total",
            "Requests refused on arrival (a bound, draining, the access rules).",
        ),
        (
            "majordomo_requeued_total",
            "Requests put back in their queue after their worker was lost.",
        ),
        (
            "majordomo_abandoned_total",
            "Requests dropped after --max-deliveries workers were lost holding them.",
        ),
        (
            "majordomo_purged_workers_total",
            "Workers purged for silence.",
        ),
        (
            "majordomo_disconnected_workers_total",
            "Workers removed because their connection closed.",
        ),
        (
            "majordomo_rejoined_workers_total",
            "Workers that registered again (queues).",
        ),
        (
            "majordomo_undeliverable_total",
            "Messages that could not be sent to their peer.",
        ),
        (
            "majordomo_lost_replies_total",
            "Replies whose client was gone (queues).",
        ),
        (
            "majordomo_stale_replies_total",
            "Replies to requests no longer held (queues).",
        ),
        (
            "majordomo_queue_protocol_errors_total",
            "Malformed messages a queue dropped.",
        ),
        (
            "majordomo_unauthorized_total",
            "Requests and READYs refused by the access rules.",
        ),
        (
            "majordomo_heartbeat_mismatch_total",
            "Workers purged for silence that then sent HEARTBEAT: heartbeat settings differ.",
        ),
        (
            "majordomo_dropped_requests_total",
            "Requests dropped unanswered, by reason.",
        ),
        (
            "majordomo_protocol_errors_total",
            "Malformed or unexpected messages, by kind.",
        ),
        (
            "majordomo_guard_connections_total",
            "Connections the ZMTP guard accepted.",
        ),
        (
            "majordomo_guard_pongs_total",
            "ZMTP PINGs the guard answered.",
        ),
        (
            "majordomo_guard_dropped_total",
            "Replies the guard dropped for a peer that was gone or did not read.",
        ),
        (
            "majordomo_guard_refused_total",
            "Connections the guard closed, by the rule broken.",
        ),
        (
            "majordomo_reloads_total",
            "SIGHUP reloads (CURVE client keys, access rules), by result.",
        ),
        (
            "majordomo_worker_requests_total",
            "Requests a worker's handler finished, by service and outcome (ok, or failed: no reply sent).",
        ),
        (
            "majordomo_titanic_accepted_total",
            "Requests Titanic stored and acknowledged.",
        ),
        (
            "majordomo_titanic_refused_total",
            "titanic.request calls answered 500 (malformed, store full, write failed).",
        ),
        ("majordomo_titanic_replied_total", "Replies Titanic stored."),
        (
            "majordomo_titanic_dispatched_total",
            "Requests Titanic sent to their service, each attempt.",
        ),
        (
            "majordomo_titanic_failed_dispatches_total",
            "Dispatches that ended without a stored reply.",
        ),
        (
            "majordomo_titanic_closed_total",
            "titanic.close calls answered 200.",
        ),
        (
            "majordomo_titanic_commits_total",
            "Transactions committed to the store.",
        ),
        (
            "majordomo_titanic_writes_total",
            "Writes in those transactions.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
    }
    let gauges = [
        (
            "majordomo_build_info",
            "Always 1; the version in its label.",
        ),
        ("majordomo_workers", "Workers registered."),
        ("majordomo_idle_workers", "Workers waiting for a request."),
        ("majordomo_services", "Services known."),
        ("majordomo_queued", "Requests queued."),
        ("majordomo_in_flight", "Requests held by a worker."),
        (
            "majordomo_draining",
            "1 while draining after a stop signal.",
        ),
        ("majordomo_service_queued", "Requests queued, by service."),
        (
            "majordomo_service_idle_workers",
            "Idle workers, by service.",
        ),
        (
            "majordomo_service_busy_workers",
            "Busy workers, by service.",
        ),
        (
            "majordomo_guard_open_connections",
            "Connections open through the guard.",
        ),
        (
            "majordomo_bstar_state",
            "The Binary Star state (1 primary, 2 backup, 3 active, 4 passive).",
        ),
        (
            "majordomo_bstar_active",
            "1 while this broker is the active one of its pair.",
        ),
        (
            "majordomo_bstar_peer_state",
            "The Binary Star state the peer last published.",
        ),
        (
            "majordomo_titanic_stored",
            "Requests and replies Titanic holds.",
        ),
        (
            "majordomo_titanic_queued",
            "Requests waiting for their turn to be dispatched.",
        ),
        (
            "majordomo_titanic_in_flight",
            "Requests Titanic has with the broker.",
        ),
        (
            "majordomo_titanic_held_questions",
            "titanic.reply questions held until their reply is stored.",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
    }
    describe_gauge!(
        "majordomo_queued_bytes",
        Unit::Bytes,
        "Bytes queued, as the bounds count them."
    );
    describe_gauge!(
        "majordomo_service_queued_bytes",
        Unit::Bytes,
        "Bytes queued, by service."
    );
    describe_gauge!(
        "majordomo_service_oldest_queued_seconds",
        Unit::Seconds,
        "Age of the oldest queued request, by service."
    );
    describe_gauge!(
        "majordomo_titanic_stored_bytes",
        Unit::Bytes,
        "What the stored requests and replies cost in the store."
    );
    describe_gauge!(
        "majordomo_titanic_body_bytes",
        Unit::Bytes,
        "Bodies held in memory, kept or being read from the store."
    );
    describe_gauge!(
        "majordomo_titanic_latency_seconds",
        Unit::Seconds,
        "Latency of each step of a request's round trip since the start, by step and stat (p50, p99, max)."
    );
    describe_histogram!(
        "majordomo_worker_request_duration_seconds",
        Unit::Seconds,
        "How long a worker's handler took, by service."
    );
    describe_histogram!(
        "majordomo_request_duration_seconds",
        Unit::Seconds,
        "From a request's arrival to its reply, by service (the busiest by name, the rest as other)."
    );
}

fn record_broker(stats: &BrokerStats) {
    counter!("majordomo_requests_total").absolute(stats.requests);
    counter!("majordomo_replies_total").absolute(stats.replies);
    counter!("majordomo_expired_total").absolute(stats.expired);
    counter!("majordomo_rejected_total").absolute(stats.rejected);
    counter!("majordomo_requeued_total").absolute(stats.requeued);
    counter!("majordomo_abandoned_total").absolute(stats.abandoned);
    counter!("majordomo_purged_workers_total").absolute(stats.purged);
    counter!("majordomo_disconnected_workers_total").absolute(stats.disconnected);
    counter!("majordomo_undeliverable_total").absolute(stats.undeliverable);
    counter!("majordomo_unauthorized_total").absolute(stats.unauthorized);
    counter!("majordomo_heartbeat_mismatch_total").absolute(stats.heartbeat_mismatch);
    counter!("majordomo_mmi_requests_total").absolute(stats.mmi_requests);
    gauge!("majordomo_workers").set(stats.workers as f64);
    gauge!("majordomo_idle_workers").set(stats.idle_workers as f64);
    gauge!("majordomo_services").set(stats.services as f64);
    gauge!("majordomo_queued").set(stats.queued as f64);
    gauge!("majordomo_queued_bytes").set(stats.queued_bytes as f64);
    gauge!("majordomo_in_flight").set(stats.in_flight as f64);
    gauge!("majordomo_draining").set(if stats.draining { 1.0 } else { 0.0 });
    for s in &stats.per_service {
        let name = String::from_utf8_lossy(&s.name).into_owned();
        gauge!("majordomo_service_queued", "service" => name.clone()).set(s.queued as f64);
        gauge!("majordomo_service_queued_bytes", "service" => name.clone())
            .set(s.queued_bytes as f64);
        gauge!("majordomo_service_idle_workers", "service" => name.clone())
            .set(s.idle_workers as f64);
        gauge!("majordomo_service_busy_workers", "service" => name.clone())
            .set(s.busy_workers as f64);
        gauge!("majordomo_service_oldest_queued_seconds", "service" => name)
            .set(s.oldest_queued_ms as f64 / 1000.0);
    }
}

fn record_titanic(stats: &majordomo_titanic::TitanicStats) {
    counter!("majordomo_titanic_accepted_total").absolute(stats.accepted);
    counter!("majordomo_titanic_refused_total").absolute(stats.refused);
    counter!("majordomo_titanic_replied_total").absolute(stats.replied);
    counter!("majordomo_titanic_dispatched_total").absolute(stats.dispatched);
    counter!("majordomo_titanic_failed_dispatches_total").absolute(stats.failed);
    counter!("majordomo_titanic_closed_total").absolute(stats.closed);
    counter!("majordomo_titanic_commits_total").absolute(stats.commits);
    counter!("majordomo_titanic_writes_total").absolute(stats.writes);
    gauge!("majordomo_titanic_stored").set(stats.stored as f64);
    gauge!("majordomo_titanic_stored_bytes").set(stats.stored_bytes as f64);
    gauge!("majordomo_titanic_queued").set(stats.queued as f64);
    gauge!("majordomo_titanic_in_flight").set(stats.in_flight as f64);
    gauge!("majordomo_titanic_held_questions").set(stats.held as f64);
    gauge!("majordomo_titanic_body_bytes").set((stats.body_bytes + stats.reading_bytes) as f64);
    let steps = [
        ("submit", stats.submit),
        ("queue_wait", stats.queue_wait),
        ("dispatch", stats.dispatch),
        ("reply", stats.reply),
        ("close", stats.close),
    ];
    for (step, latency) in steps {
        let figures = [
            ("p50", latency.p50),
            ("p99", latency.p99),
            ("max", latency.max),
        ];
        for (figure, value) in figures {
            gauge!("majordomo_titanic_latency_seconds", "step" => step, "stat" => figure)
                .set(value.as_secs_f64());
        }
    }
}

fn record_queue(stats: &QueueStats) {
    counter!("majordomo_requests_total").absolute(stats.requests);
    counter!("majordomo_replies_total").absolute(stats.replies);
    counter!("majordomo_lost_replies_total").absolute(stats.lost_replies);
    counter!("majordomo_stale_replies_total").absolute(stats.stale_replies);
    counter!("majordomo_expired_total").absolute(stats.expired);
    counter!("majordomo_rejected_total").absolute(stats.rejected);
    counter!("majordomo_requeued_total").absolute(stats.requeued);
    counter!("majordomo_abandoned_total").absolute(stats.abandoned);
    counter!("majordomo_purged_workers_total").absolute(stats.expired_workers);
    counter!("majordomo_rejoined_workers_total").absolute(stats.rejoined_workers);
    counter!("majordomo_undeliverable_total").absolute(stats.undeliverable);
    counter!("majordomo_queue_protocol_errors_total").absolute(stats.protocol_errors);
    gauge!("majordomo_workers").set(stats.workers as f64);
    gauge!("majordomo_idle_workers").set(stats.idle_workers as f64);
    gauge!("majordomo_queued").set(stats.queued as f64);
    gauge!("majordomo_queued_bytes").set(stats.queued_bytes as f64);
    gauge!("majordomo_in_flight").set(stats.in_flight as f64);
}

fn record_guards(guards: &[GuardStatsHandle]) {
    let all: Vec<_> = guards.iter().map(GuardStatsHandle::stats).collect();
    counter!("majordomo_guard_connections_total").absolute(all.iter().map(|s| s.accepted).sum());
    gauge!("majordomo_guard_open_connections").set(all.iter().map(|s| s.open).sum::<u64>() as f64);
    counter!("majordomo_guard_pongs_total").absolute(all.iter().map(|s| s.pongs).sum());
    counter!("majordomo_guard_dropped_total").absolute(all.iter().map(|s| s.dropped).sum());
    for rule in Rule::ALL {
        let count = all.iter().map(|s| s.count(rule)).sum();
        counter!("majordomo_guard_refused_total", "rule" => rule.as_str()).absolute(count);
    }
}

/// The process's resident memory, CPU time, open descriptors and start time, from /proc
/// (Linux), in the Prometheus text format under the names its client libraries use. Written
/// here rather than through the recorder: CPU time is a counter of fractional seconds, and the
/// facade's counters count whole numbers.
fn process_metrics(started: f64) -> String {
    let mut page = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        page.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        ));
    };
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            family(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                kib * 1024.0,
            );
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces, so split after its ')'): utime
        // and stime are the 12th and 13th, in clock ticks of 1/100 s (USER_HZ on Linux).
        let ticks: Option<f64> = stat.rsplit_once(')').and_then(|(_, rest)| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        });
        if let Some(ticks) = ticks {
            family(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                ticks / 100.0,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        started,
    );
    page
}
