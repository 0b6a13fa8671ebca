//! The figures of each run, and the table or JSON object they are reported in.

use super::{BenchArgs, RunKind};

/// Figures of one measured run.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub(super) kind: RunKind,
    pub(super) clients: usize,
    pub(super) in_flight: usize,
    pub(super) size: usize,
    pub(super) requests: u64,
    pub(super) seconds: f64,
    pub(super) p50_us: u32,
    pub(super) p99_us: u32,
    pub(super) max_us: u32,
    pub(super) cpu_s_per_100k: f64,
    pub(super) rss_start_kib: u64,
    pub(super) rss_end_kib: u64,
    pub(super) peak_kib: u64,
    /// Lowest and highest rate over the repeats (both the run's own rate without repeats).
    pub(super) rate_range: (f64, f64),
}

impl Run {
    pub(super) fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn json(&self) -> String {
        format!(
            "{{\"mode\":\"{}\",\"clients\":{},\"in_flight\":{},\"size\":{},\"requests\":{},\"seconds\":{:.3},\"requests_per_s\":{:.0},\"requests_per_s_min\":{:.0},\"requests_per_s_max\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"server_cpu_s_per_100k\":{:.3},\"server_rss_start_kib\":{},\"server_rss_end_kib\":{},\"server_peak_rss_kib\":{}}}",
            self.kind, self.clients, self.in_flight, self.size, self.requests, self.seconds, self.rate(),
            self.rate_range.0, self.rate_range.1, self.p50_us, self.p99_us, self.max_us,
            self.cpu_s_per_100k, self.rss_start_kib, self.rss_end_kib, self.peak_kib
        )
    }
}

/// Prints `runs` as a table with the ratios between them, or as one JSON object with `--json`.
pub(super) fn report(args: &BenchArgs, runs: &[Run]) {
    let rate = |kind: RunKind, size: usize| {
        runs.iter()
            .find(|r| r.kind == kind && r.size == size)
            .map(Run::rate)
    };
    let ratio = |kind, base, size| match (rate(kind, size), rate(base, size)) {
        (Some(b), Some(c)) if c > 0.0 => Some(b / c),
        _ => None,
    };
    let brokers = [
        RunKind::Relay,
        RunKind::RelayAll,
        RunKind::Broker,
        RunKind::Busypoll,
        RunKind::External,
    ];
    // Each broker against the one-hop echo, and against the relay: two hops with 7/MDP's one
    // request per worker at a time and no protocol work.
    let ratios = |base: RunKind| {
        brokers
            .iter()
            .filter(move |kind| **kind != base)
            .flat_map(move |kind| {
                args.sizes
                    .iter()
                    .filter_map(move |s| ratio(*kind, base, *s).map(|r| (*kind, *s, r)))
            })
    };
    if args.json {
        let items: Vec<String> = runs.iter().map(Run::json).collect();
        let json = |base| {
            ratios(base)
                .map(|(mode, size, r)| format!("\"{mode}/{size}\":{r:.3}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{{\"clients\":{},\"workers\":{},\"in_flight\":{},\"repeat\":{},\"transport\":\"{}\",\"busy_poll_us\":{},\"worker_busy_poll_us\":{},\"runs\":[{}],\"over_ceiling\":{{{}}},\"over_relay\":{{{}}}}}",
            args.clients,
            args.workers,
            args.in_flight,
            args.repeat.max(1),
            args.transport,
            args.busy_poll.as_micros(),
            args.worker_busy_poll.as_micros(),
            items.join(","),
            json(RunKind::Ceiling),
            json(RunKind::Relay)
        );
        return;
    }
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
        "ceiling: raw DEALER-ROUTER echo, same load; serial: the same echo with {} connections x 1 in flight (7/MDP's worker hop); relay: a forwarder with no protocol, one request per echo peer at a time (7/MDP's rule); relay-all: the same with no limit per peer; busypoll: broker --busy-poll {}",
        args.workers,
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
        "{:<9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>13} {:>22}",
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
            format!("  range {:.0}-{:.0}", r.rate_range.0, r.rate_range.1)
        } else {
            String::new()
        };
        println!(
            "{:<9} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>13.2} {:>10} -> {:>6} ({}){range}",
            r.kind,
            r.size,
            r.rate(),
            f64::from(r.p50_us) / 1000.0,
            f64::from(r.p99_us) / 1000.0,
            f64::from(r.max_us) / 1000.0,
            r.cpu_s_per_100k,
            r.rss_start_kib,
            r.rss_end_kib,
            r.peak_kib
        );
    }
    for base in [RunKind::Ceiling, RunKind::Relay] {
        for (mode, size, r) in ratios(base) {
            println!("{mode}/{base} at {size} bytes: {r:.2}");
        }
    }
}
