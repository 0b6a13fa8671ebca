//! The figures of each run, and the table or JSON object they are reported in.

use serde::{Serialize, Serializer};

use super::titanic_guide::Comparison;
use super::{BenchArgs, RunKind};

/// Figures of one measured run; `--json` prints each as one object with these names.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Run {
    /// What was measured.
    #[serde(rename = "mode")]
    pub(super) kind: RunKind,
    /// Clients, one DEALER socket each.
    pub(super) clients: usize,
    /// Requests in flight per client.
    pub(super) in_flight: usize,
    /// Body size in bytes.
    pub(super) size: usize,
    /// Replies received while the run was measured (every part, PARTIALs and FINALs, in the
    /// `stream` run).
    pub(super) requests: u64,
    /// How long the run was measured.
    #[serde(serialize_with = "thousandths")]
    pub(super) seconds: f64,
    /// Replies per second (parts per second in the `stream` run).
    #[serde(rename = "requests_per_s", serialize_with = "whole")]
    pub(super) rate: f64,
    /// Lowest rate over the repeats (the run's own rate without repeats).
    #[serde(rename = "requests_per_s_min", serialize_with = "whole")]
    pub(super) rate_min: f64,
    /// Highest rate over the repeats (the run's own rate without repeats).
    #[serde(rename = "requests_per_s_max", serialize_with = "whole")]
    pub(super) rate_max: f64,
    /// Median latency in microseconds.
    pub(super) p50_us: u32,
    /// 99th percentile latency in microseconds.
    pub(super) p99_us: u32,
    /// Highest latency in microseconds.
    pub(super) max_us: u32,
    /// The server's CPU seconds per 100,000 replies (parts in the `stream` run).
    #[serde(rename = "server_cpu_s_per_100k", serialize_with = "thousandths")]
    pub(super) cpu_s_per_100k: f64,
    /// The server's resident memory in KiB when the measured run started.
    #[serde(rename = "server_rss_start_kib")]
    pub(super) rss_start_kib: u64,
    /// The server's resident memory in KiB when the measured run ended.
    #[serde(rename = "server_rss_end_kib")]
    pub(super) rss_end_kib: u64,
    /// The most memory the server has held resident, in KiB.
    #[serde(rename = "server_peak_rss_kib")]
    pub(super) peak_kib: u64,
}

/// What `--json` prints: the settings, every run, and each broker's rate over the ceiling's and
/// over the relay's.
#[derive(Serialize)]
struct Report<'a> {
    clients: usize,
    workers: usize,
    in_flight: usize,
    repeat: usize,
    transport: &'static str,
    busy_poll_us: u128,
    worker_busy_poll_us: u128,
    runs: &'a [Run],
    over_ceiling: Ratios,
    over_relay: Ratios,
    /// The guarded broker over the same broker with `--no-guard`: what the guard costs.
    over_no_guard: Ratios,
    /// The guarded broker over the unguarded one behind a byte-copying proxy: what the guard's
    /// reading costs beyond the relay hop.
    over_copy_relay: Ratios,
    /// The broker with metrics over the same broker without: what metrics cost; and the
    /// streamed parts per second over the 7/MDP replies per second: a part's cost against a
    /// reply's.
    over_broker: Ratios,
    /// `client-mux` over `client-pool`: requests per second, when both were measured.
    #[serde(skip_serializing_if = "Ratios::is_empty")]
    over_client_pool: Ratios,
    /// CPU time per request, keyed `RUN/BASE/SIZE`: `client-mux` over `client-pool` (the
    /// callers'), `curve` over `broker` (the broker's).
    #[serde(skip_serializing_if = "Ratios::is_empty")]
    cpu_over: Ratios,
    /// The `titanic-guide` run at each size, when it was made.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    titanic_guide: &'a [Comparison],
}

/// Ratios keyed `MODE/SIZE`, in the order of the table.
struct Ratios(Vec<(String, f64)>);

impl Ratios {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Ratios {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, r)| (key, rounded(*r, 3))))
    }
}

/// `x` as printed with `places` decimals, so the JSON holds the figures the table shows.
fn rounded(x: f64, places: usize) -> f64 {
    format!("{x:.places$}").parse().unwrap_or(x)
}

/// Serializes a figure rounded to three decimals.
fn thousandths<S: Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(rounded(*x, 3))
}

/// Serializes a figure rounded to a whole number.
fn whole<S: Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    match format!("{x:.0}").parse::<u64>() {
        Ok(n) => serializer.serialize_u64(n),
        Err(_) => serializer.serialize_f64(*x),
    }
}

/// Prints `runs` as a table with the ratios between them, then the `titanic-guide`
/// `comparisons`, or all as one JSON object with `--json`.
pub(super) fn report(args: &BenchArgs, runs: &[Run], comparisons: &[Comparison]) {
    if args.json {
        println!("{}", json(args, runs, comparisons));
    } else {
        if !runs.is_empty() || comparisons.is_empty() {
            table(args, runs);
        }
        for comparison in comparisons {
            comparison.print();
        }
    }
}

/// The runs set against `base` (the one-hop echo, or the relay: two hops with 7/MDP's one request
/// per worker at a time and no protocol work): each other broker's rate over `base`'s, per size,
/// in the order of the table, where both were measured.
fn ratios(args: &BenchArgs, runs: &[Run], base: RunKind) -> Vec<(RunKind, usize, f64)> {
    let rate = |kind: RunKind, size: usize| {
        runs.iter()
            .find(|r| r.kind == kind && r.size == size)
            .map(|r| r.rate)
    };
    // Set against the unguarded broker, only our guarded runs say anything.
    let brokers: &[RunKind] = match base {
        RunKind::NoGuard => &[
            RunKind::Broker,
            RunKind::BrokerRelay,
            RunKind::CopyRelay,
            RunKind::Busypoll,
        ],
        RunKind::CopyRelay => &[RunKind::Broker],
        RunKind::Broker => &[
            RunKind::Metrics,
            RunKind::Stream,
            RunKind::Curve,
            RunKind::Freelance,
        ],
        RunKind::ClientPool => &[RunKind::ClientMux],
        RunKind::ClientMux => &[RunKind::Freelance],
        _ => &[
            RunKind::Relay,
            RunKind::RelayAll,
            RunKind::Broker,
            RunKind::NoGuard,
            RunKind::BrokerRelay,
            RunKind::Metrics,
            RunKind::CopyRelay,
            RunKind::Busypoll,
            RunKind::External,
        ],
    };
    let mut ratios = Vec::new();
    for &kind in brokers.iter().filter(|kind| **kind != base) {
        for &size in &args.sizes {
            if let (Some(b), Some(c)) = (rate(kind, size), rate(base, size)) {
                if c > 0.0 {
                    ratios.push((kind, size, b / c));
                }
            }
        }
    }
    ratios
}

/// `kind`'s CPU time per request over `base`'s, per size, where both were measured: what
/// multiplexing saves the callers (`client-mux` over `client-pool`), what encryption costs the
/// broker (`curve` over `broker`).
fn cpu_ratios(args: &BenchArgs, runs: &[Run], kind: RunKind, base: RunKind) -> Vec<(usize, f64)> {
    let cpu = |kind: RunKind, size: usize| {
        runs.iter()
            .find(|r| r.kind == kind && r.size == size)
            .map(|r| r.cpu_s_per_100k)
    };
    args.sizes
        .iter()
        .filter_map(|&size| match (cpu(kind, size), cpu(base, size)) {
            (Some(k), Some(b)) if b > 0.0 => Some((size, k / b)),
            _ => None,
        })
        .collect()
}

/// The CPU comparisons the report makes: (run, base).
const CPU_PAIRS: [(RunKind, RunKind); 2] = [
    (RunKind::ClientMux, RunKind::ClientPool),
    (RunKind::Curve, RunKind::Broker),
];

/// The `--json` report: one object on one line.
fn json(args: &BenchArgs, runs: &[Run], comparisons: &[Comparison]) -> String {
    let over = |base| {
        Ratios(
            ratios(args, runs, base)
                .into_iter()
                .map(|(kind, size, r)| (format!("{kind}/{size}"), r))
                .collect(),
        )
    };
    let report = Report {
        clients: args.clients,
        workers: args.workers,
        in_flight: args.in_flight,
        repeat: args.repeat.max(1),
        transport: args.transport.as_str(),
        busy_poll_us: args.busy_poll.as_micros(),
        worker_busy_poll_us: args.worker_busy_poll.as_micros(),
        runs,
        over_ceiling: over(RunKind::Ceiling),
        over_relay: over(RunKind::Relay),
        over_no_guard: over(RunKind::NoGuard),
        over_copy_relay: over(RunKind::CopyRelay),
        over_broker: over(RunKind::Broker),
        over_client_pool: over(RunKind::ClientPool),
        cpu_over: Ratios(
            CPU_PAIRS
                .iter()
                .flat_map(|&(kind, base)| {
                    cpu_ratios(args, runs, kind, base)
                        .into_iter()
                        .map(move |(size, r)| (format!("{kind}/{base}/{size}"), r))
                })
                .collect(),
        ),
        titanic_guide: comparisons,
    };
    serde_json::to_string(&report).expect("plain data serializes")
}

/// The table: the settings, one line per run, then the ratios.
fn table(args: &BenchArgs, runs: &[Run]) {
    println!(
        "{} clients x {} in flight, {} echo workers{} (busy-poll {}), {} transport, {:?} measured after {:?} warm-up, server runtime threads {}; every reply checked",
        args.clients,
        args.in_flight,
        args.workers,
        if args.in_process_workers {
            " in this process"
        } else {
            " in their own processes"
        },
        humantime::format_duration(args.worker_busy_poll),
        args.transport,
        args.duration,
        args.warmup,
        args.server_threads
    );
    println!(
        "ceiling: raw DEALER-ROUTER echo, same load; serial: the same echo with {} connections x 1 in flight (7/MDP's worker hop); relay: a forwarder with no protocol, one request per echo peer at a time (7/MDP's rule); relay-all: the same with no limit per peer; broker: ours, guarded (the default: the guard as the front end); no-guard: ours with --no-guard; broker-relay: ours with --guard-relay; metrics: ours with --metrics-listen; copy-relay: ours unguarded on a Unix socket behind a proxy that copies bytes from TCP (the relay hop alone); stream: ours with 18/MDP clients and workers that answer each request with {} PARTIALs then a FINAL of the body, req/s counting every part; busypoll: broker --busy-poll {}; client-pool and client-mux: ours, guarded, called by clients x in-flight tasks sharing one Client (a connection per request in flight) or one MuxClient (one connection), their cpu and rss being this process's (the callers'); curve: ours with CURVE (--curve-secret-key-file), clients through a bridge in this process and workers through their own; curve-handshakes: clients tasks each opening CURVE connections one after another, req/s being handshakes per second (bytes 0); freelance: no broker, the workers as Freelance echo servers (flserver) and clients x in-flight callers on clients Freelance clients, cpu and rss the first server's",
        args.workers,
        args.stream_parts,
        humantime::format_duration(args.busy_poll)
    );
    if let Some(endpoint) = &args.external {
        println!("external: the broker at {endpoint}, same load and workers");
    }
    if args.repeat > 1 {
        println!(
            "each run measured {} times: the run with the median rate is shown, with the range of rates",
            args.repeat
        );
    }
    println!(
        "{:<16} {:>6} {:>10} {:>8} {:>8} {:>8} {:>13} {:>22}",
        "run",
        "bytes",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s/100k",
        "server rss KiB (peak)"
    );
    for r in runs {
        let range = if args.repeat > 1 {
            format!("  range {:.0}-{:.0}", r.rate_min, r.rate_max)
        } else {
            String::new()
        };
        println!(
            "{:<16} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>13.2} {:>10} -> {:>6} ({}){range}",
            r.kind,
            r.size,
            r.rate,
            f64::from(r.p50_us) / 1000.0,
            f64::from(r.p99_us) / 1000.0,
            f64::from(r.max_us) / 1000.0,
            r.cpu_s_per_100k,
            r.rss_start_kib,
            r.rss_end_kib,
            r.peak_kib
        );
    }
    for base in [
        RunKind::Ceiling,
        RunKind::Relay,
        RunKind::NoGuard,
        RunKind::CopyRelay,
        RunKind::Broker,
        RunKind::ClientPool,
        RunKind::ClientMux,
    ] {
        for (mode, size, r) in ratios(args, runs, base) {
            println!("{mode}/{base} at {size} bytes: {r:.2}");
        }
    }
    for (kind, base) in CPU_PAIRS {
        for (size, r) in cpu_ratios(args, runs, kind, base) {
            println!("{kind}/{base} cpu per request at {size} bytes: {r:.2}");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Command::parse_from(std::iter::once("bench").chain(extra.iter().copied())).args
    }

    fn run(kind: RunKind, rate: f64) -> Run {
        Run {
            kind,
            clients: 4,
            in_flight: 20,
            size: 64,
            requests: 3001,
            seconds: 0.30049,
            rate,
            rate_min: rate - 0.5,
            rate_max: rate + 10.25,
            p50_us: 120,
            p99_us: 900,
            max_us: 4000,
            cpu_s_per_100k: 1.23456,
            rss_start_kib: 6000,
            rss_end_kib: 6100,
            peak_kib: 6200,
        }
    }

    #[test]
    fn run_kinds_serialize_as_the_command_line_names_them() {
        for kind in RunKind::value_variants() {
            assert_eq!(
                serde_json::to_string(kind).expect("serializes"),
                format!("\"{kind}\"")
            );
        }
        assert_eq!(RunKind::RelayAll.to_string(), "relay-all");
        assert_eq!(RunKind::Busypoll.to_string(), "busypoll");
    }

    #[test]
    fn json_holds_the_settings_the_runs_and_the_ratios_in_table_order() {
        let args = args(&["--sizes", "64", "--busy-poll", "150us", "--repeat", "0"]);
        let runs = [
            run(RunKind::Ceiling, 1000.4),
            run(RunKind::Relay, 70.5),
            run(RunKind::Broker, 60.0),
        ];
        let run_json = |mode: &str, rate: &str, min: &str, max: &str| {
            format!(
                "{{\"mode\":\"{mode}\",\"clients\":4,\"in_flight\":20,\"size\":64,\"requests\":3001,\
                 \"seconds\":0.3,\"requests_per_s\":{rate},\"requests_per_s_min\":{min},\
                 \"requests_per_s_max\":{max},\"p50_us\":120,\"p99_us\":900,\"max_us\":4000,\
                 \"server_cpu_s_per_100k\":1.235,\"server_rss_start_kib\":6000,\
                 \"server_rss_end_kib\":6100,\"server_peak_rss_kib\":6200}}"
            )
        };
        let expected = format!(
            "{{\"clients\":4,\"workers\":2,\"in_flight\":20,\"repeat\":1,\"transport\":\"tcp\",\
             \"busy_poll_us\":150,\"worker_busy_poll_us\":0,\"runs\":[{},{},{}],\
             \"over_ceiling\":{{\"relay/64\":0.07,\"broker/64\":0.06}},\
             \"over_relay\":{{\"broker/64\":0.851}},\"over_no_guard\":{{}},\"over_copy_relay\":{{}},\"over_broker\":{{}}}}",
            run_json("ceiling", "1000", "1000", "1011"),
            run_json("relay", "70", "70", "81"),
            run_json("broker", "60", "60", "70"),
        );
        assert_eq!(json(&args, &runs, &[]), expected);
    }

    #[test]
    fn the_guard_is_measured_against_the_same_broker_without_it() {
        let args = args(&["--sizes", "64"]);
        let runs = [
            run(RunKind::Relay, 100.0),
            run(RunKind::Broker, 60.0),
            run(RunKind::NoGuard, 75.0),
        ];
        assert_eq!(
            ratios(&args, &runs, RunKind::NoGuard),
            vec![(RunKind::Broker, 64, 0.8)]
        );
        assert!(json(&args, &runs, &[]).ends_with(
            "\"over_no_guard\":{\"broker/64\":0.8},\"over_copy_relay\":{},\"over_broker\":{}}"
        ));
    }

    #[test]
    fn the_multiplexed_client_is_set_against_the_pool_in_rate_and_in_cpu() {
        let args = args(&["--sizes", "64"]);
        let mut mux = run(RunKind::ClientMux, 90.0);
        mux.cpu_s_per_100k = 0.5;
        let mut pool = run(RunKind::ClientPool, 60.0);
        pool.cpu_s_per_100k = 2.0;
        let runs = [pool, mux];
        assert_eq!(
            ratios(&args, &runs, RunKind::ClientPool),
            vec![(RunKind::ClientMux, 64, 1.5)]
        );
        assert_eq!(
            cpu_ratios(&args, &runs, RunKind::ClientMux, RunKind::ClientPool),
            vec![(64, 0.25)]
        );
        assert!(json(&args, &runs, &[]).ends_with(
            "\"over_client_pool\":{\"client-mux/64\":1.5},\"cpu_over\":{\"client-mux/client-pool/64\":0.25}}"
        ));
    }

    #[test]
    fn no_ratio_without_its_base() {
        let args = args(&["--sizes", "64,4096"]);
        let runs = [run(RunKind::Broker, 60.0)];
        assert!(ratios(&args, &runs, RunKind::Ceiling).is_empty());
        assert!(json(&args, &runs, &[]).ends_with(
            "\"over_relay\":{},\"over_no_guard\":{},\"over_copy_relay\":{},\"over_broker\":{}}"
        ));
    }
}
