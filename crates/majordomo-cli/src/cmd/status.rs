//! `majordomo status`: a broker's services and totals, read through `mmi.stats`, or its
//! workers (`--workers`), read through `mmi.workers`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use majordomo_broker::{BrokerStats, WorkersPage};
use majordomo_broker::{StatsQuery, DEFAULT_PAGE};
use majordomo_client::{Client, ClientConfig, ClientError};

/// Exit status when the broker did not answer within the timeout.
pub(crate) const UNREACHABLE: u8 = 2;

/// Options of `status`.
#[derive(Args)]
pub(crate) struct StatusArgs {
    /// Broker endpoint.
    #[arg(long, default_value = crate::connect::DEFAULT_ENDPOINT)]
    connect: String,
    /// How long to wait for the broker's answer.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the broker's answer as JSON (one object: totals and `per_service`, or with
    /// `--workers` `workers`, `workers_omitted` and `per_worker`) instead of a table.
    #[arg(long)]
    json: bool,
    /// List the registered workers instead of the services (through the broker's
    /// `mmi.workers`): per service, each worker's identity (hex), the address it connects from
    /// (known when the ZMTP guard named it; `-` for a worker that chose its own identity, or
    /// with --no-guard), whether it is idle or busy, for how long, and since when it is
    /// registered. `--prefix` selects services; `--offset` and `--limit` page through workers
    /// (the first 100 by default).
    #[arg(long)]
    workers: bool,
    /// List the services whose name starts with this, a page at a time (with `--offset` and
    /// `--limit`), instead of the busiest (with `--workers`: the workers of those services).
    #[arg(long)]
    prefix: Option<String>,
    /// Services to skip, in name order: the page to list (asks for a page, like `--prefix`;
    /// with `--workers`, workers to skip).
    #[arg(long)]
    offset: Option<usize>,
    /// Most services to list in a page (the broker lists up to 1,000; default 100; with
    /// `--workers`, most workers).
    #[arg(long)]
    limit: Option<usize>,
    /// Only check that the broker answers (one small `mmi.service` request): exit 0 if it does,
    /// 1 if not, printing nothing but why not. The exit codes container health checks read
    /// (Docker's HEALTHCHECK, Kubernetes' exec probes).
    #[arg(long, conflicts_with_all = ["json", "prefix", "offset", "limit", "workers"])]
    probe: bool,
    // Last: clap lists the options after a flattened group under its heading.
    #[command(flatten)]
    curve: crate::connect::CurveArgs,
}

impl StatusArgs {
    /// The `mmi.stats` body: empty for the busiest services, or the page asked for.
    fn query(&self) -> Bytes {
        if self.prefix.is_none() && self.offset.is_none() && self.limit.is_none() {
            return Bytes::new();
        }
        StatsQuery {
            prefix: Bytes::from(self.prefix.clone().unwrap_or_default()),
            offset: self.offset.unwrap_or(0),
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
        }
        .encode()
    }
}

/// A client that asks the broker at `endpoint` once, waiting `timeout`: what `status` and
/// `top` ask the broker's `mmi.*` services with.
pub(crate) fn probe_client(
    endpoint: &str,
    curve: &crate::connect::CurveArgs,
    timeout: Duration,
) -> Result<Client> {
    let connector = curve.connectors(&[endpoint.to_owned()])?.remove(0);
    Ok(Client::new(
        connector,
        ClientConfig::default().timeout(timeout).attempts(1),
    ))
}

/// Asks the broker for its stats and prints them. Exit status 0: the broker answered; 2: no
/// answer within the timeout; 1: anything else (an answer that is not stats, a bad endpoint).
pub(crate) async fn run(args: StatusArgs) -> Result<ExitCode> {
    let client = probe_client(&args.connect, &args.curve, args.timeout)?;
    if args.probe {
        let asked = client
            .request("mmi.service", vec![Bytes::from_static(b"mmi.stats")])
            .await;
        return Ok(match asked {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("majordomo status: {} did not answer: {error}", args.connect);
                ExitCode::FAILURE
            }
        });
    }
    let service = if args.workers {
        "mmi.workers"
    } else {
        "mmi.stats"
    };
    let json = match ask(&client, service, args.query(), &args.connect).await? {
        Asked::Answer(json) => json,
        Asked::NoReply(error) => {
            eprintln!("majordomo status: {} did not answer: {error}", args.connect);
            return Ok(ExitCode::from(UNREACHABLE));
        }
    };
    if args.workers {
        let page: WorkersPage = serde_json::from_slice(&json)?;
        if args.json {
            println!("{}", serde_json::to_value(&page)?);
        } else {
            print!("{}", workers_table(&page));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stats: BrokerStats = serde_json::from_slice(&json)?;
    // A broker in a Binary Star pair adds its role and state.
    let pair = serde_json::from_slice::<serde_json::Value>(&json)?
        .get("binary_star")
        .cloned();
    if args.json {
        let mut out = serde_json::to_value(&stats)?;
        if let (Some(pair), Some(object)) = (pair, out.as_object_mut()) {
            object.insert("binary_star".to_owned(), pair);
        }
        println!("{out}");
    } else {
        print!("{}", table(&stats));
        if let Some(pair) = pair {
            println!("{}", pair_line(&pair));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the broker said to an `mmi.*` question.
pub(crate) enum Asked {
    /// The body of its `200` answer.
    Answer(Bytes),
    /// Nothing within the timeout.
    NoReply(ClientError),
}

/// Sends `query` to the broker's `service` (`mmi.stats` or `mmi.workers`). An answer that is
/// not `200` and a body is an error: a broker without that service, or no broker.
pub(crate) async fn ask(
    client: &Client,
    service: &'static str,
    query: Bytes,
    endpoint: &str,
) -> Result<Asked> {
    let reply = match client.request(service, vec![query]).await {
        Ok(reply) => reply,
        Err(error @ ClientError::NoReply { .. }) => return Ok(Asked::NoReply(error)),
        Err(error) => return Err(error.into()),
    };
    match reply.as_slice() {
        [code, body] if code.as_ref() == b"200" => Ok(Asked::Answer(body.clone())),
        [code] if code.as_ref() == b"501" => bail!(
            "{endpoint} does not implement {service} (a broker of an older version, or not \
             this implementation)"
        ),
        other => bail!(
            "{endpoint} answered {service} with {} frames, not its answer (not a majordomo broker?)",
            other.len()
        ),
    }
}

/// A duration in milliseconds as an operator reads it: `850ms`, `12.3s`, `4m05s`, `3h07m`,
/// `2d04h`.
pub(crate) fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// The workers as a table, by service, then a line of totals.
pub(crate) fn workers_table(page: &WorkersPage) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 6]> = page
        .per_worker
        .iter()
        .map(|w| {
            [
                String::from_utf8_lossy(&w.service).into_owned(),
                w.identity.iter().map(|b| format!("{b:02x}")).collect(),
                w.address.clone().unwrap_or_else(|| "-".to_owned()),
                w.state.as_str().to_owned(),
                age(w.state_ms),
                age(w.registered_ms),
            ]
        })
        .collect();
    let headers = ["SERVICE", "WORKER", "ADDRESS", "STATE", "FOR", "REGISTERED"];
    let width = |column: usize| {
        rows.iter()
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
            .max(headers[column].len())
    };
    let (service, worker, address) = (width(0), width(1), width(2));
    let _ = writeln!(
        out,
        "{:<service$}  {:<worker$}  {:<address$}  {:<5}  {:>8}  {:>10}",
        headers[0], headers[1], headers[2], headers[3], headers[4], headers[5]
    );
    for row in &rows {
        let _ = writeln!(
            out,
            "{:<service$}  {:<worker$}  {:<address$}  {:<5}  {:>8}  {:>10}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    let _ = writeln!(
        out,
        "workers {} ({} listed, {} not: page through them with --prefix, --offset, --limit)",
        page.workers,
        page.per_worker.len(),
        page.workers_omitted
    );
    out
}

/// The Binary Star line: `binary star: primary, active (peer passive), 0 requests dropped while
/// not active`.
fn pair_line(pair: &serde_json::Value) -> String {
    let text = |key: &str| pair.get(key).and_then(|v| v.as_str()).unwrap_or("unknown");
    let peer = match pair.get("peer_state").and_then(|v| v.as_str()) {
        Some(state) => format!("peer {state}"),
        None => "peer not heard".to_owned(),
    };
    format!(
        "binary star: {}, {} ({peer}), {} requests dropped while not active",
        text("role"),
        text("state"),
        pair.get("dropped").and_then(|v| v.as_u64()).unwrap_or(0)
    )
}

/// The services as a table, then the totals.
pub(crate) fn table(stats: &BrokerStats) -> String {
    let mut out = String::new();
    let width = stats
        .per_service
        .iter()
        .map(|s| String::from_utf8_lossy(&s.name).chars().count())
        .max()
        .unwrap_or(0)
        .max("SERVICE".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:>7}  {:>12}  {:>5}  {:>5}  {:>10}",
        "SERVICE", "QUEUED", "BYTES", "IDLE", "BUSY", "OLDEST"
    );
    for s in &stats.per_service {
        let oldest = if s.queued == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}s", s.oldest_queued_ms as f64 / 1000.0)
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>7}  {:>12}  {:>5}  {:>5}  {:>10}",
            String::from_utf8_lossy(&s.name),
            s.queued,
            s.queued_bytes,
            s.idle_workers,
            s.busy_workers,
            oldest
        );
    }
    if stats.services_omitted > 0 {
        let _ = writeln!(
            out,
            "... {} more services not listed (page through them with --prefix, --offset, --limit)",
            stats.services_omitted
        );
    }
    let _ = writeln!(
        out,
        "workers {} ({} idle), services {}, queued {} ({} bytes), in flight {}",
        stats.workers,
        stats.idle_workers,
        stats.services,
        stats.queued,
        stats.queued_bytes,
        stats.in_flight
    );
    let _ = writeln!(
        out,
        "requests {}, replies {}, expired {}, rejected {}, requeued {}, abandoned {}, purged {}, disconnected {}, protocol errors {}, undeliverable {}, unauthorized {}, heartbeat mismatches {}, mmi requests {}",
        stats.requests,
        stats.replies,
        stats.expired,
        stats.rejected,
        stats.requeued,
        stats.abandoned,
        stats.purged,
        stats.disconnected,
        stats.protocol_errors,
        stats.undeliverable,
        stats.unauthorized,
        stats.heartbeat_mismatch,
        stats.mmi_requests
    );
    out
}

#[cfg(test)]
mod tests {
    use majordomo_broker::{Activity, ServiceStats, WorkerStats};

    use super::*;

    #[test]
    fn the_table_has_a_line_per_service_and_the_totals() {
        let stats = BrokerStats {
            workers: 3,
            idle_workers: 1,
            services: 2,
            queued: 4,
            queued_bytes: 1300,
            requests: 10,
            replies: 6,
            per_service: vec![
                ServiceStats {
                    name: Bytes::from_static(b"echo"),
                    idle_workers: 1,
                    busy_workers: 1,
                    ..ServiceStats::default()
                },
                ServiceStats {
                    name: Bytes::from_static(b"long-service"),
                    queued: 4,
                    queued_bytes: 1300,
                    busy_workers: 1,
                    oldest_queued_ms: 2345,
                    ..ServiceStats::default()
                },
            ],
            ..BrokerStats::default()
        };
        let table = table(&stats);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE        QUEUED         BYTES   IDLE   BUSY      OLDEST"
        );
        assert_eq!(
            lines[1],
            "echo                0             0      1      1           -"
        );
        assert_eq!(
            lines[2],
            "long-service        4          1300      0      1        2.3s"
        );
        assert!(lines[3].starts_with("workers 3 (1 idle), services 2, queued 4 (1300 bytes)"));
        assert!(lines[4].starts_with("requests 10, replies 6, expired 0"));
    }

    #[test]
    fn the_workers_table_has_a_line_per_worker_and_the_count() {
        let page = WorkersPage {
            workers: 3,
            workers_omitted: 1,
            per_worker: vec![
                WorkerStats {
                    service: Bytes::from_static(b"echo"),
                    identity: Bytes::from_static(&[0, 0x6b, 0x8b, 0x45, 0x67]),
                    state: Activity::Busy,
                    state_ms: 1234,
                    registered_ms: 125_000,
                    address: Some("203.0.113.7:40122".to_owned()),
                },
                WorkerStats {
                    service: Bytes::from_static(b"echo"),
                    identity: Bytes::from_static(b"w"),
                    state: Activity::Idle,
                    state_ms: 40,
                    registered_ms: 2 * 3_600_000 + 5 * 60_000,
                    address: None,
                },
            ],
        };
        let table = workers_table(&page);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE  WORKER      ADDRESS            STATE       FOR  REGISTERED"
        );
        assert_eq!(
            lines[1],
            "echo     006b8b4567  203.0.113.7:40122  busy       1.2s       2m05s"
        );
        assert_eq!(
            lines[2],
            "echo     77          -                  idle       40ms       2h05m"
        );
        assert!(lines[3].starts_with("workers 3 (2 listed, 1 not"));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn ages_read_in_the_largest_sensible_unit() {
        assert_eq!(age(0), "0ms");
        assert_eq!(age(59_949), "59.9s");
        assert_eq!(age(60_000), "1m00s");
        assert_eq!(age(86_400_000 + 3_600_000), "1d01h");
    }
}
