//! `majordomo status`: a broker's services and totals, read through `mmi.stats`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use majordomo_broker::BrokerStats;
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
    #[command(flatten)]
    curve: crate::connect::CurveArgs,
    /// How long to wait for the broker's answer.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the broker's answer as JSON (one object: totals and `per_service`) instead of a table.
    #[arg(long)]
    json: bool,
    /// List the services whose name starts with this, a page at a time (with `--offset` and
    /// `--limit`), instead of the busiest.
    #[arg(long)]
    prefix: Option<String>,
    /// Services to skip, in name order: the page to list (asks for a page, like `--prefix`).
    #[arg(long)]
    offset: Option<usize>,
    /// Most services to list in a page (the broker lists up to 1,000; default 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Only check that the broker answers (one small `mmi.service` request): exit 0 if it does,
    /// 1 if not, printing nothing but why not. The exit codes container health checks read
    /// (Docker's HEALTHCHECK, Kubernetes' exec probes).
    #[arg(long, conflicts_with_all = ["json", "prefix", "offset", "limit"])]
    probe: bool,
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

/// Asks the broker for its stats and prints them. Exit status 0: the broker answered; 2: no
/// answer within the timeout; 1: anything else (an answer that is not stats, a bad endpoint).
pub(crate) async fn run(args: StatusArgs) -> Result<ExitCode> {
    let connector = args
        .curve
        .connectors(std::slice::from_ref(&args.connect))?
        .remove(0);
    let client = Client::new(
        connector,
        ClientConfig::default().timeout(args.timeout).attempts(1),
    );
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
    let reply = match client.request("mmi.stats", vec![args.query()]).await {
        Ok(reply) => reply,
        Err(error @ ClientError::NoReply { .. }) => {
            eprintln!("majordomo status: {} did not answer: {error}", args.connect);
            return Ok(ExitCode::from(UNREACHABLE));
        }
        Err(error) => return Err(error.into()),
    };
    let json = match reply.as_slice() {
        [code, json] if code.as_ref() == b"200" => json.clone(),
        other => bail!(
            "{} answered mmi.stats with {} frames, not stats (not a majordomo broker?)",
            args.connect,
            other.len()
        ),
    };
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
        "requests {}, replies {}, expired {}, rejected {}, requeued {}, abandoned {}, purged {}, disconnected {}, protocol errors {}, undeliverable {}, unauthorized {}, heartbeat mismatches {}",
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
        stats.heartbeat_mismatch
    );
    out
}

#[cfg(test)]
mod tests {
    use majordomo_broker::ServiceStats;

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
}
