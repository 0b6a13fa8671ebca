//! The `majordomo` command as an operator runs it.

use std::process::{Command, Output};

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{
    free_endpoint, majordomo_bin, wait_for_mmi_stats, wait_for_service, Proc, PATIENCE,
};
use majordomo_client::{Client, ClientConfig, ClientError};
use zeromq::{RouterSocket, Socket, SocketRecv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_reply_frames_one_per_line() -> Result<()> {
    let ep = free_endpoint()?;
    let broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let _worker = Proc::spawn(&[
        "worker",
        "--connect",
        &ep,
        "exec",
        "upper",
        "--",
        "tr",
        "a-z",
        "A-Z",
    ])?;
    wait_for_service(&ep, "upper").await?;
    let out = Command::new(majordomo_bin()?)
        .args(["call", "--connect", &ep, "upper", "hello ", "world"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "HELLO WORLD\n");
    let log = broker.log();
    assert!(
        log.contains(&format!("endpoint={ep}")),
        "startup line names the endpoint: {log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_takes_its_options_after_the_subcommand() -> Result<()> {
    let ep = free_endpoint()?;
    let _broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let _worker = Proc::spawn(&["worker", "echo", "--connect", &ep, "--concurrency", "2"])?;
    wait_for_service(&ep, "echo").await?;
    let out = Command::new(majordomo_bin()?)
        .args(["call", "--connect", &ep, "echo", "hello", "again"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "hello\nagain\n");
    Ok(())
}

#[test]
fn call_exits_non_zero_when_no_broker_answers() -> Result<()> {
    let ep = free_endpoint()?;
    let out = Command::new(majordomo_bin()?)
        .args([
            "call",
            "--connect",
            &ep,
            "--timeout",
            "200ms",
            "--retries",
            "2",
            "echo",
            "x",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply"));
    Ok(())
}

/// `call` against a server that takes requests and never answers: how many requests reached it,
/// and how the command ended.
async fn unanswered_call(options: &[&str]) -> Result<(usize, Output)> {
    let mut server = RouterSocket::new();
    let ep = server.bind("tcp://127.0.0.1:0").await?.to_string();
    let call = tokio::process::Command::new(majordomo_bin()?)
        .args(["call", "--connect", &ep, "--timeout", "200ms"])
        .args(options)
        .args(["echo", "x"])
        .kill_on_drop(true)
        .output();
    tokio::pin!(call);
    let mut requests = 0;
    let out = tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::select! {
                out = &mut call => break anyhow::Ok(out?),
                msg = server.recv() => {
                    let frames = msg?.into_vec();
                    assert_eq!(frames[2].as_ref(), b"MDPC01", "{frames:?}");
                    requests += 1;
                }
            }
        }
    })
    .await
    .context("call did not finish")??;
    Ok((requests, out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_makes_the_attempts_asked_for() -> Result<()> {
    for option in ["--attempts", "--retries"] {
        let (requests, out) = unanswered_call(&[option, "2"]).await?;
        assert_eq!(out.status.code(), Some(2), "{option}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no reply"),
            "{option}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(requests, 2, "{option}");
    }
    let (requests, _) = unanswered_call(&[]).await?;
    assert_eq!(requests, 3, "three attempts by default");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_that_cannot_bind_exits_with_a_clear_message() -> Result<()> {
    let ep = free_endpoint()?;
    let mut first = Proc::spawn(&["broker", "--bind", &ep])?;
    first.wait_until_serving(&ep).await?;
    let mut second = Proc::spawn(&["broker", "--bind", &ep])?;
    let status = second.wait_exit().await?;
    let stderr = second.log();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot bind") && stderr.contains(&ep),
        "{stderr}"
    );
    // The cause once, not repeated by each error that carries it.
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    let mut unguarded = Proc::spawn(&["broker", "--no-guard", "--bind", &ep])?;
    unguarded.wait_exit().await?;
    let stderr = unguarded.log();
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_malformed_endpoint_is_an_error_at_once_not_a_timeout() -> Result<()> {
    for command in [&["call"][..], &["call", "--freelance"][..]] {
        let out = Command::new(majordomo_bin()?)
            .args(command)
            .args([
                "--connect",
                "not an endpoint",
                "--timeout",
                "30s",
                "echo",
                "x",
            ])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("is not an endpoint"), "{stderr}");
    }
    Ok(())
}

/// Runs a short `majordomo bench --json` with `extra` options; returns its output once it
/// succeeded.
fn bench(extra: &[&str]) -> Result<String> {
    let out = Command::new(majordomo_bin()?)
        .args([
            "bench",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--sizes",
            "64",
            "--clients",
            "2",
            "--in-flight",
            "4",
            "--json",
        ])
        .args(extra)
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every run answered something: a run with no reply fails the command instead.
    assert!(!stdout.contains("\"requests\":0,"), "{stdout}");
    Ok(stdout)
}

#[test]
fn bench_measures_every_run_and_checks_replies() -> Result<()> {
    let stdout = bench(&["--busy-poll", "100us", "--repeat", "2"])?;
    for mode in [
        "ceiling",
        "serial",
        "relay",
        "relay-all",
        "copy-relay",
        "broker",
        "no-guard",
        "metrics",
        "busypoll",
    ] {
        assert!(
            stdout.contains(&format!("\"mode\":\"{mode}\"")),
            "{mode} run missing: {stdout}"
        );
    }
    assert!(
        stdout.contains("\"over_ceiling\":{\"relay/64\":"),
        "{stdout}"
    );
    assert!(stdout.contains("\"broker/64\":"), "{stdout}");
    assert!(
        stdout.contains("\"over_relay\":{\"relay-all/64\":"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"over_no_guard\":{\"broker/64\":"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"over_copy_relay\":{\"broker/64\":"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"over_broker\":{\"metrics/64\":"),
        "{stdout}"
    );
    assert!(stdout.contains("\"repeat\":2,"), "{stdout}");
    assert!(stdout.contains("\"requests_per_s_min\":"), "{stdout}");
    Ok(())
}

#[test]
fn bench_makes_only_the_runs_asked_for() -> Result<()> {
    let stdout = bench(&["--runs", "relay,broker", "--in-process-workers"])?;
    let modes: Vec<&str> = stdout
        .split("\"mode\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(modes, ["relay", "broker"], "{stdout}");
    // No ceiling was measured, so there is no ratio to it; the broker is set against the relay.
    assert!(stdout.contains("\"over_ceiling\":{}"), "{stdout}");
    assert!(
        stdout.contains("\"over_relay\":{\"broker/64\":"),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_services_and_totals_and_exits_2_when_nobody_answers() -> Result<()> {
    let ep = free_endpoint()?;
    let _broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let _worker = Proc::spawn(&["worker", "echo", "--connect", &ep, "--concurrency", "2"])?;
    wait_for_service(&ep, "echo").await?;
    let status = |extra: &[&str]| -> Result<Output> {
        Ok(Command::new(majordomo_bin()?)
            .args(["status", "--connect", &ep])
            .args(extra)
            .output()?)
    };
    // Both workers registered, then nothing queued and two idle.
    let deadline = std::time::Instant::now() + PATIENCE;
    let stats = loop {
        let out = status(&["--json"])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if stats["idle_workers"] == 2 || std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let echo = &stats["per_service"][0];
    assert_eq!(echo["name"], "echo", "{stats}");
    assert_eq!(
        (echo["idle_workers"].as_u64(), echo["queued"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(stats["workers"], 2, "{stats}");

    let out = status(&[])?;
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SERVICE"), "{table}");
    let echo: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(echo, ["echo", "0", "0", "2", "0", "-"], "{table}");
    assert!(
        lines[2].starts_with("workers 2 (2 idle), services 1"),
        "{table}"
    );

    // The probe: 0 and nothing printed while the broker answers.
    let out = status(&["--probe"])?;
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());

    let nobody = free_endpoint()?;
    let out = Command::new(majordomo_bin()?)
        .args(["status", "--connect", &nobody, "--timeout", "300ms"])
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The probe exits 1, as container health checks expect.
    let out = Command::new(majordomo_bin()?)
        .args([
            "status",
            "--probe",
            "--connect",
            &nobody,
            "--timeout",
            "300ms",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_workers_lists_each_worker_idle_or_busy_and_probes_are_counted_apart() -> Result<()>
{
    let ep = free_endpoint()?;
    let (_broker, _slow) = broker_with_slow_worker(&ep, &[], "60").await?;
    let _echo = Proc::spawn(&["worker", "echo", "--connect", &ep, "--concurrency", "2"])?;
    wait_for_service(&ep, "echo").await?;
    // The slow worker takes this request and holds it while the test looks.
    let client = Client::new(ep.clone(), ClientConfig::default().attempts(1));
    let held = tokio::spawn(async move { client.request("slow", vec![Bytes::from("x")]).await });
    let status = |extra: &[&str]| -> Result<Output> {
        Ok(Command::new(majordomo_bin()?)
            .args(["status", "--workers", "--connect", &ep])
            .args(extra)
            .output()?)
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let page = loop {
        let out = status(&["--json"])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let busy_slow = page["per_worker"].as_array().is_some_and(|ws| {
            ws.iter()
                .any(|w| w["service"] == "slow" && w["state"] == "busy")
        });
        if (page["workers"] == 3 && busy_slow) || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let workers = page["per_worker"].as_array().context("per_worker")?;
    let listed: Vec<(&str, &str)> = workers
        .iter()
        .map(|w| {
            (
                w["service"].as_str().unwrap_or(""),
                w["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("echo", "idle"), ("echo", "idle"), ("slow", "busy")],
        "{page}"
    );
    for worker in workers {
        let identity = worker["identity"].as_str().unwrap_or("");
        assert!(
            !identity.is_empty() && identity.chars().all(|c| c.is_ascii_hexdigit()),
            "{page}"
        );
        assert!(worker["registered_ms"].as_u64() >= worker["state_ms"].as_u64());
        // The guard named each worker, so its address is known.
        let address = worker["address"].as_str().unwrap_or("");
        assert!(address.starts_with("127.0.0.1:"), "{page}");
    }

    // The table: a line per worker, then the count.
    let out = status(&[])?;
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SERVICE"), "{table}");
    let slow: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!((slow[0], slow[3]), ("slow", "busy"), "{table}");
    assert!(slow[2].starts_with("127.0.0.1:"), "{table}");
    assert!(
        lines[4].starts_with("workers 3 (3 listed, 0 not"),
        "{table}"
    );

    // A page: one worker of the echo service.
    let out = status(&["--json", "--prefix", "echo", "--limit", "1"])?;
    let page: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        page["per_worker"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    assert_eq!(page["workers_omitted"], 2, "{page}");

    // Every status above was an mmi.* request: none of them is client traffic.
    let out = Command::new(majordomo_bin()?)
        .args(["status", "--json", "--connect", &ep])
        .output()?;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(stats["requests"], 1, "{stats}");
    assert!(stats["mmi_requests"].as_u64() >= Some(4), "{stats}");
    held.abort();
    Ok(())
}

#[test]
fn completions_and_man_page_are_generated_from_the_command() -> Result<()> {
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef"),
        ("fish", "complete -c"),
    ] {
        let out = Command::new(majordomo_bin()?)
            .args(["completions", shell])
            .output()?;
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout)?;
        assert!(script.contains(marker), "{shell} script: {script}");
        assert!(
            script.contains("majordomo"),
            "{shell} script names the command"
        );
        assert!(
            script.contains("broker"),
            "{shell} script offers the subcommands"
        );
    }
    let out = Command::new(majordomo_bin()?).arg("man").output()?;
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout)?;
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "roff: {page}"
    );
    assert!(page.contains("majordomo"));
    assert!(page.contains("broker"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_the_broker() -> Result<()> {
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let _worker = Proc::spawn(&["worker", "--connect", &ep, "echo"])?;
    wait_for_service(&ep, "echo").await?;
    broker.signal("HUP")?;
    // Still serving after the signal, and still running.
    wait_for_service(&ep, "echo").await?;
    let client = majordomo_client::Client::new(ep.clone(), Default::default());
    let reply = client
        .request("echo", vec![bytes::Bytes::from_static(b"after HUP")])
        .await?;
    assert_eq!(reply, [bytes::Bytes::from_static(b"after HUP")]);
    assert!(!broker.has_exited()?, "SIGHUP ended the broker");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_event_fields() -> Result<()> {
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep, "--log-format", "json"])?;
    let _worker = Proc::spawn(&["worker", "--connect", &ep, "echo"])?;
    wait_for_service(&ep, "echo").await?;
    broker.signal("TERM")?;
    assert!(broker.wait_exit().await?.success());
    let log = broker.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("every line is JSON: {log}"))?;
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .with_context(|| format!("no {message:?} line in {log}"))
    };
    let bound = find("broker bound")?;
    assert_eq!(bound["level"], "INFO");
    assert_eq!(bound["endpoint"], ep.as_str());
    assert_eq!(bound["guarded"], true);
    // The worker is named by its address (the guard's identity), inside the broker's span.
    let ready = find("worker ready")?;
    assert_eq!(ready["service"], "echo");
    let worker = ready["worker"].as_str().context("a worker field")?;
    assert!(
        worker.starts_with("127.0.0.1:") && worker.contains('#'),
        "{ready}"
    );
    assert_eq!(ready["span"]["name"], "broker", "{ready}");

    // A fatal error is a JSON line too, its cause once.
    let mut holder = Proc::spawn(&["broker", "--bind", &ep])?;
    holder.wait_until_serving(&ep).await?;
    let mut second = Proc::spawn(&["broker", "--bind", &ep, "--log-format", "json"])?;
    let status = second.wait_exit().await?;
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap_or_default())
        .with_context(|| format!("the last line is JSON: {log}"))?;
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot start"),
        "{last}"
    );
    assert_eq!(log.matches("Address already in use").count(), 1, "{log}");
    Ok(())
}

/// A broker at `ep` with `extra` options, and a worker for `slow` whose handler takes `seconds`
/// (a shell that sleeps, then echoes).
async fn broker_with_slow_worker(ep: &str, extra: &[&str], seconds: &str) -> Result<(Proc, Proc)> {
    let mut args = vec!["broker", "--bind", ep];
    args.extend_from_slice(extra);
    let broker = Proc::spawn(&args)?;
    let script = format!("sleep {seconds}; cat");
    let worker = Proc::spawn(&[
        "worker",
        "--connect",
        ep,
        "exec",
        "slow",
        "--",
        "sh",
        "-c",
        &script,
    ])?;
    wait_for_service(ep, "slow").await?;
    Ok((broker, worker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0() -> Result<()> {
    let ep = free_endpoint()?;
    let (mut broker, _worker) = broker_with_slow_worker(&ep, &[], "1").await?;
    let client = Client::new(
        ep.clone(),
        ClientConfig::default().timeout(PATIENCE).attempts(1),
    );
    let in_flight = tokio::spawn(async move {
        client
            .request("slow", vec![Bytes::from_static(b"taken before")])
            .await
    });
    wait_for_mmi_stats(&ep, "the request is with the worker", |s| s.in_flight == 1).await?;
    broker.signal("TERM")?;
    wait_for_mmi_stats(&ep, "draining", |s| s.draining).await?;
    // A new request is dropped unanswered: its client would retry elsewhere.
    let late = Client::new(
        ep.clone(),
        ClientConfig::default()
            .timeout(std::time::Duration::from_millis(300))
            .attempts(1),
    );
    let refused = late
        .request("slow", vec![Bytes::from_static(b"too late")])
        .await;
    assert!(
        matches!(refused, Err(ClientError::NoReply { .. })),
        "{refused:?}"
    );
    // The one in flight is answered, then the broker exits cleanly.
    assert_eq!(in_flight.await??, [Bytes::from_static(b"taken before")]);
    let status = broker.wait_exit().await?;
    assert!(status.success(), "{status}: {}", broker.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_a_draining_broker_at_once() -> Result<()> {
    let ep = free_endpoint()?;
    // The handler and the drain timeout both outlast the test's patience: only the second
    // signal can end the broker in time.
    let (mut broker, _worker) =
        broker_with_slow_worker(&ep, &["--drain-timeout", "120s"], "60").await?;
    let client = Client::new(
        ep.clone(),
        ClientConfig::default().timeout(PATIENCE).attempts(1),
    );
    let _in_flight = tokio::spawn(async move {
        client
            .request("slow", vec![Bytes::from_static(b"long")])
            .await
    });
    wait_for_mmi_stats(&ep, "the request is with the worker", |s| s.in_flight == 1).await?;
    broker.signal("TERM")?;
    wait_for_mmi_stats(&ep, "draining", |s| s.draining).await?;
    broker.signal("TERM")?;
    let status = broker.wait_exit().await?;
    assert!(status.success(), "{status}: {}", broker.log());
    Ok(())
}

/// `majordomo broker --print-config` with `args` and `env` set: stdout.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut command = vec!["broker"];
    command.extend_from_slice(args);
    print_config_of(&command, env)
}

/// Checks that `majordomo <command> --print-config` with the variable `name` set to `value`
/// fails, saying `expected`.
fn refused_variable(command: &str, name: &str, value: &str, expected: &str) -> Result<()> {
    let out = Command::new(majordomo_bin()?)
        .args([command, "--print-config"])
        .env(name, value)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name}={value} accepted");
    assert!(stderr.contains(expected), "{name}: {stderr}");
    Ok(())
}

/// The value line of `key` in a printed configuration.
fn line<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_default()
}

/// A configuration file holding `text`, removed when the returned handle is dropped.
fn config_file(name: &str, text: &str) -> Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix(&format!("majordomo-{name}-"))
        .suffix(".toml")
        .tempfile()?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(file)
}

#[test]
fn configuration_precedence_is_flag_then_environment_then_file_then_default() -> Result<()> {
    let config = config_file(
        "precedence",
        "[broker]\nheartbeat = \"1s\"\nliveness = 4\nmax-deliveries = 5\nno_guard = true\n",
    )?;
    let file = config.path().to_str().context("a UTF-8 path")?;
    // Defaults alone.
    let defaults = print_config(&[], &[])?;
    assert_eq!(line(&defaults, "heartbeat"), "heartbeat = \"2500ms\"");
    assert_eq!(line(&defaults, "no-guard"), "no-guard = false");
    // The file over the defaults.
    let from_file = print_config(&["--config", file], &[])?;
    assert_eq!(line(&from_file, "heartbeat"), "heartbeat = \"1s\"");
    assert_eq!(line(&from_file, "liveness"), "liveness = 4");
    assert_eq!(line(&from_file, "no-guard"), "no-guard = true");
    // The environment over the file.
    let env = [
        ("MAJORDOMO_BROKER_HEARTBEAT", "2s"),
        ("MAJORDOMO_BROKER_LIVENESS", "6"),
    ];
    let from_env = print_config(&["--config", file], &env)?;
    assert_eq!(line(&from_env, "heartbeat"), "heartbeat = \"2s\"");
    assert_eq!(line(&from_env, "liveness"), "liveness = 6");
    assert_eq!(line(&from_env, "max-deliveries"), "max-deliveries = 5");
    // A flag over the environment; the file named by the environment too.
    let from_flag = print_config(
        &["--heartbeat", "3s"],
        &[("MAJORDOMO_CONFIG", file), env[0], env[1]],
    )?;
    assert_eq!(line(&from_flag, "heartbeat"), "heartbeat = \"3s\"");
    assert_eq!(line(&from_flag, "liveness"), "liveness = 6");
    assert_eq!(line(&from_flag, "max-deliveries"), "max-deliveries = 5");
    Ok(())
}

#[test]
fn the_guard_mode_comes_from_the_environment() -> Result<()> {
    let default = print_config(&[], &[])?;
    assert_eq!(line(&default, "guard-relay"), "guard-relay = false");
    let relay = [("MAJORDOMO_BROKER_GUARD_RELAY", "true")];
    let from_env = print_config(&[], &relay)?;
    assert_eq!(line(&from_env, "guard-relay"), "guard-relay = true");
    Ok(())
}

#[test]
fn the_service_idle_grace_is_set_like_every_broker_option() -> Result<()> {
    let key = "service-idle-grace";
    assert_eq!(
        line(&print_config(&[], &[])?, key),
        "service-idle-grace = \"60s\""
    );
    let config = config_file("grace", "[broker]\nservice_idle_grace = \"5s\"\n")?;
    let file = config.path().to_str().context("a UTF-8 path")?;
    let from_file = print_config(&["--config", file], &[])?;
    assert_eq!(line(&from_file, key), "service-idle-grace = \"5s\"");
    let env = [("MAJORDOMO_BROKER_SERVICE_IDLE_GRACE", "10s")];
    let from_env = print_config(&["--config", file], &env)?;
    assert_eq!(line(&from_env, key), "service-idle-grace = \"10s\"");
    let from_flag = print_config(&["--config", file, "--service-idle-grace", "0s"], &env)?;
    assert_eq!(line(&from_flag, key), "service-idle-grace = \"0s\"");
    Ok(())
}

#[test]
fn a_bad_environment_value_is_blamed_on_its_variable() -> Result<()> {
    for (name, value, expected) in [
        (
            "MAJORDOMO_BROKER_HEARTBEAT",
            "soon",
            "MAJORDOMO_BROKER_HEARTBEAT: invalid value 'soon'",
        ),
        (
            "MAJORDOMO_BROKER_NO_GUARD",
            "perhaps",
            "MAJORDOMO_BROKER_NO_GUARD=perhaps: expected true or false",
        ),
        (
            "MAJORDOMO_BROKER_HEARTBAET",
            "1s",
            "did you mean MAJORDOMO_BROKER_HEARTBEAT",
        ),
    ] {
        refused_variable("broker", name, value, expected)?;
    }
    Ok(())
}

#[test]
fn a_repeatable_option_takes_a_list_from_its_environment_variable() -> Result<()> {
    let env = [(
        "MAJORDOMO_BROKER_BIND",
        "tcp://127.0.0.1:5601,tcp://127.0.0.1:5602",
    )];
    let config = print_config(&[], &env)?;
    assert_eq!(
        line(&config, "bind"),
        "bind = [\"tcp://127.0.0.1:5601\", \"tcp://127.0.0.1:5602\"]"
    );
    Ok(())
}

#[test]
fn the_log_format_is_read_from_the_configuration_file_too() -> Result<()> {
    assert_eq!(
        line(&print_config(&[], &[])?, "log-format"),
        "log-format = \"text\""
    );
    let config = config_file("log-format", "[broker]\nlog-format = \"json\"\n")?;
    let file = config.path().to_str().context("a UTF-8 path")?;
    let from_file = print_config(&["--config", file], &[])?;
    assert_eq!(line(&from_file, "log-format"), "log-format = \"json\"");
    let from_flag = print_config(&["--config", file, "--log-format", "text"], &[])?;
    assert_eq!(line(&from_flag, "log-format"), "log-format = \"text\"");
    Ok(())
}

#[test]
fn configuration_errors_name_the_key() -> Result<()> {
    for (name, text, expected) in [
        (
            "unknown",
            "[broker]\nheartbeet = \"1s\"\n",
            "unknown key broker.heartbeet",
        ),
        (
            "value",
            "[broker]\nheartbeat = \"soon\"\n",
            "broker.heartbeat: invalid value 'soon'",
        ),
        (
            "flag",
            "[broker]\nno-guard = \"yes\"\n",
            "broker.no-guard: expected true or false",
        ),
        (
            "table",
            "[brokr]\nheartbeat = \"1s\"\n",
            "unknown table [brokr]",
        ),
    ] {
        let config = config_file(name, text)?;
        let out = Command::new(majordomo_bin()?)
            .args(["broker", "--config"])
            .arg(config.path())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_runs_from_its_configuration_file() -> Result<()> {
    let ep = free_endpoint()?;
    let config = config_file(
        "runs",
        &format!("[broker]\nbind = [\"{ep}\"]\nheartbeat = \"100ms\"\n"),
    )?;
    let file = config.path().to_str().context("a UTF-8 path")?;
    let mut broker = Proc::spawn(&["broker", "--config", file])?;
    broker.wait_until_serving(&ep).await?;
    let _worker = Proc::spawn(&["worker", "--connect", &ep, "--heartbeat", "100ms", "echo"])?;
    wait_for_service(&ep, "echo").await?;
    let reply = Client::new(ep.clone(), ClientConfig::default())
        .request("echo", vec![Bytes::from_static(b"configured")])
        .await?;
    assert_eq!(reply, [Bytes::from_static(b"configured")]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_each_part_as_it_arrives_from_a_streaming_exec_worker() -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let ep = free_endpoint()?;
    let scratch = integration_tests::scratch_dir("stream")?;
    let flag = scratch.path().join("go");
    // One line, then (once the test has seen it) another and an unterminated rest.
    let script = format!(
        "echo one; n=0; while [ ! -e {} ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done; \
         echo two; printf three",
        flag.display()
    );
    let _broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let _worker = Proc::spawn(&[
        "worker",
        "--connect",
        &ep,
        "--mdp",
        "0.2",
        "exec",
        "--stream",
        "lines",
        "--",
        "sh",
        "-c",
        &script,
    ])?;
    wait_for_service(&ep, "lines").await?;
    // The client in majortomo's dialect, the worker in RFC 18's: the broker answers each in its
    // own.
    let mut call = tokio::process::Command::new(majordomo_bin()?)
        .args([
            "call",
            "--connect",
            &ep,
            "--mdp",
            "0.2-majortomo",
            "--timeout",
            "10s",
        ])
        .args(["lines", "go"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = tokio::io::BufReader::new(call.stdout.take().context("piped")?);
    let mut first = String::new();
    tokio::time::timeout(PATIENCE, out.read_line(&mut first)).await??;
    // Printed while the program still waits: the part came before the rest was written.
    assert_eq!(first, "one\n");
    std::fs::write(&flag, b"")?;
    let mut rest = String::new();
    tokio::time::timeout(PATIENCE, out.read_to_string(&mut rest)).await??;
    assert_eq!(rest, "\ntwo\n\nthree\n", "a blank line between parts");
    let status = tokio::time::timeout(PATIENCE, call.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

/// `majordomo <command> --print-config <rest...>` with `env` set: stdout. The flag goes right
/// after the command's name, before any program `exec` runs.
fn print_config_of(command: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let out = Command::new(majordomo_bin()?)
        .args(&command[..1])
        .arg("--print-config")
        .args(&command[1..])
        .envs(env.iter().copied())
        .output()?;
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn worker_and_titanic_read_their_table_and_variables_as_the_servers_do() -> Result<()> {
    let config = config_file(
        "worker-titanic",
        "[worker]\nheartbeat = \"1s\"\nconcurrency = 4\n[titanic]\nmax-stored = 5\nretention = \"1h\"\n",
    )?;
    let file = config.path().to_str().context("a UTF-8 path")?;
    // The worker's options come before or after what it serves; `exec`'s program keeps its own
    // arguments, however the file is given.
    for command in [
        vec!["worker", "--config", file, "echo"],
        vec!["worker", "echo", "--config", file],
        vec!["worker", "exec", "--config", file, "svc", "--", "cat", "-u"],
    ] {
        let config = print_config_of(&command, &[])?;
        assert_eq!(
            line(&config, "heartbeat"),
            "heartbeat = \"1s\"",
            "{command:?}"
        );
        assert_eq!(
            line(&config, "concurrency"),
            "concurrency = 4",
            "{command:?}"
        );
    }
    let env = [("MAJORDOMO_WORKER_HEARTBEAT", "2s")];
    let config = print_config_of(&["worker", "--config", file, "echo"], &env)?;
    assert_eq!(line(&config, "heartbeat"), "heartbeat = \"2s\"");
    let config = print_config_of(
        &["worker", "--config", file, "echo", "--heartbeat", "3s"],
        &env,
    )?;
    assert_eq!(line(&config, "heartbeat"), "heartbeat = \"3s\"");

    let env = [("MAJORDOMO_TITANIC_MAX_STORED", "7")];
    let config = print_config_of(&["titanic", "--config", file], &env)?;
    assert_eq!(line(&config, "max-stored"), "max-stored = 7");
    assert_eq!(line(&config, "retention"), "retention = \"1h\"");

    for (name, value, expected) in [
        (
            "MAJORDOMO_WORKER_CONCURRENCY",
            "many",
            "MAJORDOMO_WORKER_CONCURRENCY: invalid value 'many'",
        ),
        (
            "MAJORDOMO_TITANIC_RETENSION",
            "1h",
            "did you mean MAJORDOMO_TITANIC_RETENTION",
        ),
    ] {
        refused_variable("titanic", name, value, expected)?;
    }
    Ok(())
}

#[test]
fn the_networks_allowed_take_cidr_or_an_address_and_refuse_anything_else() -> Result<()> {
    let config = print_config(
        &[
            "--guard-allow-from",
            "10.0.0.0/8",
            "--guard-allow-from",
            "192.168.1.7",
        ],
        &[],
    )?;
    assert_eq!(
        line(&config, "guard-allow-from"),
        "guard-allow-from = [\"10.0.0.0/8\", \"192.168.1.7\"]"
    );
    let env = [("MAJORDOMO_BROKER_GUARD_ALLOW_FROM", "10.0.0.0/8,::1")];
    let config = print_config(&[], &env)?;
    assert_eq!(
        line(&config, "guard-allow-from"),
        "guard-allow-from = [\"10.0.0.0/8\", \"::1\"]"
    );
    let out = Command::new(majordomo_bin()?)
        .args([
            "broker",
            "--print-config",
            "--guard-allow-from",
            "10.0.0.0/33",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a /33 accepted");
    assert!(stderr.contains("is not a network"), "{stderr}");
    Ok(())
}
