//! The `titanic-guide` run: our Titanic against the Guide's, under the Guide's client.
//!
//! `--clients` sequential clients in the shape of the Guide's ticlient on its mdcliapi (one
//! request at a time each): submit through `titanic.request`, ask `titanic.reply` at once and
//! then again `--titanic-guide-poll` after each 300 until it answers 200, then `titanic.close`.
//! They run against `majordomo titanic` (a fresh store) and then against
//! `integration-tests/python/guide_titanic.py`, a Titanic server in the shape of the Guide's
//! Python example (a fresh directory), each measured on a fresh `majordomo broker` with the
//! same echo workers (`--workers` `majordomo worker echo` processes). Reported for each: round
//! trips per second, the Titanic process's CPU and memory, and the median and 99th percentile
//! of each step (submit, the wait for the reply, close); and our rate over the Guide's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use majordomo_client::{Client, ClientConfig};
use serde::Serialize;

use super::load::{Window, DRAIN, MEASURE, WARMUP};
use super::report::Run;
use super::{BenchArgs, RunKind};
use crate::bins::spawn_majordomo;
use crate::child::{Child, Stderr};
use crate::endpoint::{free_endpoint, SocketFile};

/// The Guide-shaped server's script, from the project's directory.
const SCRIPT: &str = "integration-tests/python/guide_titanic.py";
/// The project's Python with pyzmq (made by `scripts/setup-interop.sh`), from its directory.
const PYTHON: &str = ".venv/bin/python";
/// Longest a round trip may wait for its reply before the run fails.
const REPLY_PATIENCE: Duration = Duration::from_secs(30);

/// Which Titanic server a half of the run measures.
enum Server<'a> {
    /// `majordomo titanic`.
    Ours,
    /// The Guide-shaped Python server: the interpreter, then the script.
    Guide(&'a GuidePaths),
}

/// The interpreter and script that run the Guide-shaped server.
struct GuidePaths {
    python: PathBuf,
    script: PathBuf,
}

/// The median and 99th percentile of one step, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50_us: u32,
    p99_us: u32,
}

impl Percentiles {
    /// Of `samples` (any order, not empty), picked as the other runs pick theirs.
    fn of(mut samples: Vec<u32>) -> Self {
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
        Self {
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        }
    }
}

/// One server's figures: the run (its latencies are whole round trips, its server figures the
/// Titanic process's) and each step's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Side {
    /// `majordomo` or `guide`.
    server: &'static str,
    #[serde(flatten)]
    run: Run,
    /// `titanic.request` until its 200.
    submit: Percentiles,
    /// From the submit's 200 until `titanic.reply` answered 200, the polls and the waits after
    /// each 300 included.
    reply_wait: Percentiles,
    /// `titanic.close` until its 200.
    close: Percentiles,
    /// `titanic.reply` calls per round trip, the one that answered 200 included.
    #[serde(serialize_with = "thousandths")]
    polls_per_round_trip: f64,
}

/// The `titanic-guide` run at one body size, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Comparison {
    size: usize,
    clients: usize,
    /// The clients' wait after each 300.
    poll_us: u128,
    ours: Side,
    /// `None` when the Guide's server could not be run (`guide_skipped` says why).
    guide: Option<Side>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guide_skipped: Option<String>,
    /// Our round trips per second over the Guide's.
    #[serde(serialize_with = "thousandths_or_null")]
    ours_over_guide: Option<f64>,
}

impl Comparison {
    /// Prints the comparison as lines of the table.
    pub(super) fn print(&self) {
        println!(
            "titanic-guide at {} bytes: {} sequential Guide-API clients (submit, titanic.reply until 200 with {} after each 300, close) against majordomo titanic, then the Guide's titanic.py (guide_titanic.py), each on a fresh broker with the same echo workers",
            self.size,
            self.clients,
            humantime::format_duration(Duration::from_micros(self.poll_us as u64))
        );
        println!(
            "{:<10} {:>9} {:>17} {:>17} {:>17} {:>17} {:>9} {:>11} {:>10}",
            "server",
            "rt/s",
            "rt p50/p99 ms",
            "submit p50/p99",
            "reply p50/p99",
            "close p50/p99",
            "polls/rt",
            "cpu s/100k",
            "rss KiB"
        );
        let ms = |us: u32| f64::from(us) / 1000.0;
        let pair = |p: Percentiles| format!("{:.2}/{:.2}", ms(p.p50_us), ms(p.p99_us));
        for side in std::iter::once(&self.ours).chain(&self.guide) {
            let r = &side.run;
            let range = if r.rate_min < r.rate_max {
                format!("  range {:.1}-{:.1}", r.rate_min, r.rate_max)
            } else {
                String::new()
            };
            println!(
                "{:<10} {:>9.1} {:>17} {:>17} {:>17} {:>17} {:>9.2} {:>11.2} {:>10}{range}",
                side.server,
                r.rate,
                format!("{:.2}/{:.2}", ms(r.p50_us), ms(r.p99_us)),
                pair(side.submit),
                pair(side.reply_wait),
                pair(side.close),
                side.polls_per_round_trip,
                r.cpu_s_per_100k,
                r.rss_end_kib
            );
        }
        match (&self.ours_over_guide, &self.guide_skipped) {
            (Some(ratio), _) => println!(
                "titanic-guide majordomo/guide at {} bytes: {ratio:.2}",
                self.size
            ),
            (None, Some(why)) => println!("titanic-guide guide: not measured ({why})"),
            (None, None) => {}
        }
    }
}

/// Serializes a figure rounded to three decimals.
fn thousandths<S: serde::Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(format!("{x:.3}").parse().unwrap_or(*x))
}

/// Serializes a figure rounded to three decimals, or null.
fn thousandths_or_null<S: serde::Serializer>(
    x: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match x {
        Some(x) => thousandths(x, serializer),
        None => serializer.serialize_none(),
    }
}

/// Measures our Titanic and then the Guide's (unless it cannot be run: then it says why on
/// stderr and in the comparison), each `--repeat` times keeping the median.
pub(super) async fn compare(args: &BenchArgs, size: usize) -> Result<Comparison> {
    ensure!(
        !args.titanic_guide_poll.is_zero(),
        "--titanic-guide-poll must be positive"
    );
    let ours = median(args.repeat, || side(args, size, Server::Ours)).await?;
    let (guide, guide_skipped) = match guide_paths(args) {
        Ok(paths) => {
            let guide = median(args.repeat, || side(args, size, Server::Guide(&paths))).await?;
            (Some(guide), None)
        }
        Err(why) => {
            eprintln!("titanic-guide {size} B: the Guide's Titanic is not measured: {why}");
            (None, Some(why))
        }
    };
    let ours_over_guide = guide
        .as_ref()
        .filter(|g| g.run.rate > 0.0)
        .map(|g| ours.run.rate / g.run.rate);
    Ok(Comparison {
        size,
        clients: args.clients,
        poll_us: args.titanic_guide_poll.as_micros(),
        ours,
        guide,
        guide_skipped,
        ours_over_guide,
    })
}

/// Measures `repeat` times (at least once) and keeps the side with the median rate, noting the
/// range of rates.
async fn median<F, Fut>(repeat: usize, mut one: F) -> Result<Side>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Side>>,
{
    let mut all = Vec::new();
    for _ in 0..repeat.max(1) {
        all.push(one().await?);
    }
    all.sort_by(|a, b| a.run.rate.total_cmp(&b.run.rate));
    let (rate_min, rate_max) = (all[0].run.rate, all[all.len() - 1].run.rate);
    let mut median = all.swap_remove(all.len() / 2);
    median.run.rate_min = rate_min;
    median.run.rate_max = rate_max;
    Ok(median)
}

/// The Guide-shaped server's interpreter and script: `--guide-python` and `--guide-titanic`,
/// or else found in the project's directory (the first of the current directory and its
/// parents, then the directory this was built from, that holds the script). An error saying
/// what is missing when either is not there.
fn guide_paths(args: &BenchArgs) -> std::result::Result<GuidePaths, String> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cwd = std::env::current_dir().ok();
    let root = cwd
        .iter()
        .flat_map(|dir| dir.ancestors())
        .chain(std::iter::once(built_from.as_path()))
        .find(|dir| dir.join(SCRIPT).exists())
        .map(Path::to_path_buf);
    let script = match (&args.guide_titanic, &root) {
        (Some(script), _) => script.clone(),
        (None, Some(root)) => root.join(SCRIPT),
        (None, None) => {
            return Err(format!(
                "{SCRIPT} not found from the current directory up; give --guide-titanic"
            ))
        }
    };
    let python = match (&args.guide_python, &root) {
        (Some(python), _) => python.clone(),
        (None, Some(root)) => root.join(PYTHON),
        (None, None) => {
            return Err(format!(
                "{PYTHON} not found from the current directory up; give --guide-python"
            ))
        }
    };
    for path in [&script, &python] {
        if !path.exists() {
            return Err(format!(
                "{} is missing (scripts/setup-interop.sh makes .venv)",
                path.display()
            ));
        }
    }
    Ok(GuidePaths { python, script })
}

/// What one client measured, each step of each round trip that ended while measured.
#[derive(Default)]
struct Counted {
    round_trip_us: Vec<u32>,
    submit_us: Vec<u32>,
    reply_wait_us: Vec<u32>,
    close_us: Vec<u32>,
    polls: u64,
    errors: Vec<String>,
}

/// Microseconds since `from`, saturated.
fn micros_since(from: Instant) -> u32 {
    from.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// The status of a 9/TSP answer: its first frame's three digits.
fn status(answer: &[Bytes]) -> &[u8] {
    answer.first().map_or(&[], |s| &s[..s.len().min(3)])
}

/// One client: round trips one at a time until the phase is `DRAIN`.
async fn client(
    client: Client,
    id: usize,
    size: usize,
    poll: Duration,
    phase: Arc<AtomicU8>,
) -> Counted {
    let mut counted = Counted::default();
    let filler = "x".repeat(size.saturating_sub(24));
    for seq in 0u64.. {
        if phase.load(Ordering::Relaxed) == DRAIN {
            break;
        }
        let body = Bytes::from(format!("{id:08} {seq:014} {filler}"));
        let started = Instant::now();
        let outcome = async {
            let answer = client
                .request(
                    "titanic.request",
                    vec![Bytes::from_static(b"echo"), body.clone()],
                )
                .await?;
            ensure!(
                status(&answer) == b"200" && answer.len() == 2,
                "titanic.request answered {answer:?}"
            );
            let uuid = answer[1].clone();
            let submitted = Instant::now();
            let mut polls = 0u64;
            loop {
                let answer = client.request("titanic.reply", vec![uuid.clone()]).await?;
                polls += 1;
                match status(&answer) {
                    b"200" => {
                        ensure!(
                            answer[1..] == [body.clone()],
                            "request {id}/{seq}: another reply"
                        );
                        break;
                    }
                    b"300" if submitted.elapsed() < REPLY_PATIENCE => {
                        tokio::time::sleep(poll).await
                    }
                    _ => bail!("titanic.reply for {id}/{seq} answered {answer:?}"),
                }
            }
            let replied = Instant::now();
            let answer = client.request("titanic.close", vec![uuid]).await?;
            ensure!(
                status(&answer) == b"200",
                "titanic.close answered {answer:?}"
            );
            Ok((submitted, replied, polls))
        }
        .await;
        let (submitted, replied, polls) = match outcome {
            Ok(times) => times,
            Err(error) => {
                counted.errors.push(error.to_string());
                break;
            }
        };
        // Counted when it ends in the measured time, as the other runs count replies.
        if phase.load(Ordering::Relaxed) == MEASURE {
            counted.round_trip_us.push(micros_since(started));
            counted
                .submit_us
                .push((submitted - started).as_micros().min(u32::MAX as u128) as u32);
            counted
                .reply_wait_us
                .push((replied - submitted).as_micros().min(u32::MAX as u128) as u32);
            counted.close_us.push(micros_since(replied));
            counted.polls += polls;
        }
    }
    counted
}

/// One measured half: a fresh broker, echo workers and `server` (on a fresh store or
/// directory), the clients through the warm-up and the measured time.
async fn side(args: &BenchArgs, size: usize, server: Server<'_>) -> Result<Side> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let endpoint = free_endpoint(args.transport)?;
    // Removed once the broker is gone.
    let _socket_file = SocketFile::of(&endpoint);
    let threads = args.server_threads.to_string();
    let broker = spawn_majordomo(
        &["broker", "--bind", &endpoint, "--threads", &threads],
        "warn",
    )?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(spawn_majordomo(
            &["worker", "--connect", &endpoint, "echo"],
            "warn",
        )?);
    }
    let dir = std::env::temp_dir().join(format!(
        "majordomo-bench-titanic-guide-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (name, mut titanic) = match server {
        Server::Ours => {
            let store = dir.join("bench.redb").to_string_lossy().into_owned();
            let in_flight = args.titanic_in_flight.to_string();
            let argv = [
                "titanic",
                "--connect",
                &endpoint,
                "--store",
                &store,
                "--in-flight-per-service",
                &in_flight,
                "--threads",
                &threads,
            ];
            ("majordomo", spawn_majordomo(&argv, "warn")?)
        }
        Server::Guide(paths) => {
            let messages = dir.join("messages");
            let argv = [
                paths.script.as_os_str(),
                endpoint.as_ref(),
                messages.as_os_str(),
            ];
            let child = Child::spawn(&paths.python, &argv, "warn", Stderr::Inherit)?;
            ("guide", child)
        }
    };
    let measured = async {
        ready(&endpoint, &mut titanic).await?;
        measure(args, &endpoint, titanic.pid(), size).await
    }
    .await;
    titanic.terminate(Duration::from_secs(5)).await;
    for w in workers {
        w.terminate(Duration::from_secs(2)).await;
    }
    broker.terminate(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (run, counted) = measured.with_context(|| format!("titanic-guide, {name} server"))?;
    Ok(Side {
        server: name,
        polls_per_round_trip: counted.polls as f64 / run.requests as f64,
        run,
        submit: Percentiles::of(counted.submit_us),
        reply_wait: Percentiles::of(counted.reply_wait_us),
        close: Percentiles::of(counted.close_us),
    })
}

/// Waits, a bounded time, until the broker knows the three Titanic services and echo; an error
/// if the Titanic process exits first.
async fn ready(endpoint: &str, titanic: &mut Child) -> Result<()> {
    let mmi = Client::new(endpoint, ClientConfig::default());
    for service in ["titanic.request", "titanic.reply", "titanic.close", "echo"] {
        let mut found = false;
        for _ in 0..400 {
            ensure!(!titanic.has_exited()?, "the Titanic server exited");
            let answer = mmi
                .request("mmi.service", vec![Bytes::from(service)])
                .await?;
            if status(&answer) == b"200" {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ensure!(found, "{service} did not register");
    }
    Ok(())
}

/// The clients through the warm-up and the measured time: the run (its latencies whole round
/// trips) and every step measured.
async fn measure(
    args: &BenchArgs,
    endpoint: &str,
    pid: u32,
    size: usize,
) -> Result<(Run, Counted)> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let handles: Vec<_> = (0..args.clients)
        .map(|id| {
            // mdcliapi's shape and defaults: 2.5 s per attempt, 3 attempts.
            let titanic = Client::new(endpoint, ClientConfig::default());
            tokio::spawn(client(
                titanic,
                id,
                size,
                args.titanic_guide_poll,
                phase.clone(),
            ))
        })
        .collect();
    let window = Window::run(args, pid, &phase).await;
    // Already so when the window ran; stops the clients when it failed.
    phase.store(DRAIN, Ordering::Relaxed);
    let window = window?;
    let mut all = Counted::default();
    for handle in handles {
        let counted = handle.await?;
        all.round_trip_us.extend(counted.round_trip_us);
        all.submit_us.extend(counted.submit_us);
        all.reply_wait_us.extend(counted.reply_wait_us);
        all.close_us.extend(counted.close_us);
        all.polls += counted.polls;
        all.errors.extend(counted.errors);
    }
    ensure!(
        all.errors.is_empty(),
        "round trips failed: {}",
        all.errors.join("; ")
    );
    ensure!(
        !all.round_trip_us.is_empty(),
        "no round trip ended during the measured run"
    );
    let requests = all.round_trip_us.len() as u64;
    let run = window.into_run(
        RunKind::TitanicGuide,
        size,
        args.clients,
        1,
        requests,
        std::mem::take(&mut all.round_trip_us),
    )?;
    Ok((run, all))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Command::parse_from(std::iter::once("bench").chain(extra.iter().copied())).args
    }

    fn side(server: &'static str, rate: f64) -> Side {
        Side {
            server,
            run: Run {
                kind: RunKind::TitanicGuide,
                clients: 4,
                in_flight: 1,
                size: 64,
                requests: 40,
                seconds: 4.0,
                rate,
                rate_min: rate,
                rate_max: rate,
                p50_us: 2000,
                p99_us: 9000,
                max_us: 9500,
                cpu_s_per_100k: 50.0,
                rss_start_kib: 6000,
                rss_end_kib: 6100,
                peak_kib: 6200,
            },
            submit: Percentiles::of(vec![300, 100, 200]),
            reply_wait: Percentiles::of(vec![1500]),
            close: Percentiles::of(vec![90, 80]),
            polls_per_round_trip: 1.0 / 3.0,
        }
    }

    #[test]
    fn percentiles_pick_as_the_other_runs_do() {
        let p = Percentiles::of((1..=200).rev().collect());
        assert_eq!((p.p50_us, p.p99_us), (100, 198));
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.p50_us, one.p99_us), (7, 7));
    }

    #[test]
    fn the_poll_defaults_to_the_guides_ticlient_and_paths_can_be_given() {
        let defaults = args(&[]);
        assert_eq!(defaults.titanic_guide_poll, Duration::from_millis(100));
        let given = args(&[
            "--guide-python",
            "/nonexistent/python",
            "--guide-titanic",
            "/nonexistent/guide_titanic.py",
        ]);
        let why = guide_paths(&given).err().expect("neither path exists");
        assert!(why.contains("/nonexistent/"), "{why}");
    }

    #[test]
    fn json_holds_both_sides_each_step_and_the_ratio_or_why_the_guide_is_missing() {
        let measured = Comparison {
            size: 64,
            clients: 4,
            poll_us: 100_000,
            ours: side("majordomo", 300.0),
            guide: Some(side("guide", 37.5)),
            guide_skipped: None,
            ours_over_guide: Some(8.0),
        };
        let json = serde_json::to_value(&measured).expect("serializes");
        assert_eq!(json["ours"]["server"], "majordomo");
        assert_eq!(json["ours"]["mode"], "titanic-guide");
        assert_eq!(json["ours"]["requests_per_s"], 300);
        assert_eq!(json["guide"]["submit"]["p50_us"], 200);
        assert_eq!(json["guide"]["submit"]["p99_us"], 200);
        assert_eq!(json["guide"]["close"]["p50_us"], 80);
        assert_eq!(json["guide"]["reply_wait"]["p99_us"], 1500);
        assert_eq!(json["guide"]["polls_per_round_trip"], 0.333);
        assert_eq!(json["ours_over_guide"], 8.0);
        assert!(json.get("guide_skipped").is_none());

        let skipped = Comparison {
            guide: None,
            guide_skipped: Some("no python".into()),
            ours_over_guide: None,
            ..measured
        };
        let json = serde_json::to_value(&skipped).expect("serializes");
        assert!(json["guide"].is_null());
        assert!(json["ours_over_guide"].is_null());
        assert_eq!(json["guide_skipped"], "no python");
    }
}
