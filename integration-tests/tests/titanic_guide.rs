//! The Guide-shaped Titanic server (`python/guide_titanic.py`) that `majordomo bench`'s
//! `titanic-guide` run measures ours against: it serves 9/TSP through our broker, and the run
//! reports both servers.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use integration_tests::{free_endpoint, majordomo_bin, wait_for_service, Proc, PyPeer, PATIENCE};
use majordomo_client::{Client, ClientConfig};

/// Our broker with one echo worker, and the Guide-shaped Titanic on a fresh directory, every
/// service registered. The directory is removed when the guard drops.
async fn setup(name: &str) -> Result<(String, Vec<Proc>, PyPeer, tempfile::TempDir)> {
    let ep = free_endpoint()?;
    let broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let worker = Proc::spawn(&["worker", "--connect", &ep, "echo"])?;
    let dir = integration_tests::scratch_dir(&format!("guide-titanic-{name}"))?;
    let messages = dir.path().join("messages");
    let messages = messages.to_str().context("a UTF-8 path")?;
    let mut titanic = PyPeer::spawn("guide_titanic.py", &[&ep, messages])?;
    assert_eq!(titanic.line().await?, "ready");
    for service in ["titanic.request", "titanic.reply", "titanic.close", "echo"] {
        wait_for_service(&ep, service).await?;
    }
    Ok((ep, vec![broker, worker], titanic, dir))
}

fn f(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_ticlient_gets_its_reply_from_guide_titanic_through_our_broker() -> Result<()> {
    let (ep, _procs, mut titanic, _dir) = setup("ticlient").await?;
    let mut client = PyPeer::spawn("ticlient.py", &[&ep, "echo", "Hello"])?;
    assert_eq!(client.line().await?, "reply Hello");
    assert_eq!(client.exit_code().await?, 0);
    titanic.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_titanic_answers_pending_done_and_unknown_as_tsp_says() -> Result<()> {
    let (ep, _procs, mut titanic, _dir) = setup("tsp").await?;
    let client = Client::new(ep.as_str(), ClientConfig::default());
    // An unknown UUID: 400 from titanic.reply, and titanic.close is idempotent (200).
    let unknown = f("0123456789abcdef0123456789abcdef");
    let answer = client
        .request("titanic.reply", vec![unknown.clone()])
        .await?;
    assert_eq!(answer, [f("400")]);
    let answer = client.request("titanic.close", vec![unknown]).await?;
    assert_eq!(answer, [f("200")]);
    // A request for a service nobody serves stays pending (mmi.service says 404, so the
    // dispatcher holds it) until closed.
    let answer = client
        .request("titanic.request", vec![f("nobody"), f("lost")])
        .await?;
    assert_eq!(answer[0], f("200"), "{answer:?}");
    let held = answer[1].clone();
    for _ in 0..3 {
        let answer = client.request("titanic.reply", vec![held.clone()]).await?;
        assert_eq!(answer, [f("300")]);
    }
    let answer = client.request("titanic.close", vec![held.clone()]).await?;
    assert_eq!(answer, [f("200")]);
    let answer = client.request("titanic.reply", vec![held]).await?;
    assert_eq!(answer, [f("400")]);
    for i in 0..3 {
        let body = f(&format!("round trip {i}"));
        let answer = client
            .request("titanic.request", vec![f("echo"), body.clone()])
            .await?;
        assert_eq!(answer.len(), 2, "{answer:?}");
        assert_eq!(answer[0], f("200"));
        let uuid = answer[1].clone();
        assert_eq!(uuid.len(), 32);
        assert!(uuid.iter().all(u8::is_ascii_hexdigit), "{uuid:?}");
        // 300 while pending, then 200 with the reply, within a bounded number of polls.
        let mut reply = None;
        for _ in 0..(PATIENCE.as_millis() / 20) {
            let answer = client.request("titanic.reply", vec![uuid.clone()]).await?;
            if answer[0] == f("200") {
                reply = Some(answer[1..].to_vec());
                break;
            }
            assert_eq!(answer, [f("300")]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reply.context("no reply")?, [body]);
        // The reply stays until closed, then the UUID is unknown.
        let answer = client.request("titanic.reply", vec![uuid.clone()]).await?;
        assert_eq!(answer[0], f("200"));
        let answer = client.request("titanic.close", vec![uuid.clone()]).await?;
        assert_eq!(answer, [f("200")]);
        let answer = client.request("titanic.reply", vec![uuid]).await?;
        assert_eq!(answer, [f("400")]);
    }
    titanic.kill().await?;
    Ok(())
}

#[test]
fn the_titanic_guide_bench_run_measures_ours_and_the_guides() -> Result<()> {
    // The bench finds the project's Python and the script from the current directory up.
    integration_tests::python()?;
    let out = Command::new(majordomo_bin()?)
        .args([
            "bench",
            "--runs",
            "titanic-guide",
            "--duration",
            "500ms",
            "--warmup",
            "200ms",
            "--sizes",
            "64",
            "--clients",
            "2",
            "--titanic-guide-poll",
            "20ms",
            "--json",
        ])
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    // Only the comparison was asked for.
    assert_eq!(report["runs"], serde_json::json!([]), "{stdout}");
    let comparison = &report["titanic_guide"][0];
    assert_eq!(comparison["size"], 64, "{stdout}");
    assert_eq!(comparison["clients"], 2, "{stdout}");
    assert_eq!(comparison["poll_us"], 20_000, "{stdout}");
    let mut rates = Vec::new();
    for (side, server) in [("ours", "majordomo"), ("guide", "guide")] {
        let side = &comparison[side];
        assert_eq!(side["server"], server, "{stdout}");
        assert_eq!(side["mode"], "titanic-guide", "{stdout}");
        assert_eq!(side["in_flight"], 1, "{stdout}");
        assert!(side["requests"].as_u64() > Some(0), "{stdout}");
        let rate = side["requests_per_s"].as_f64().context("rate")?;
        assert!(rate > 0.0, "{stdout}");
        rates.push(rate);
        for step in ["submit", "reply_wait", "close"] {
            let p50 = side[step]["p50_us"].as_u64().context("p50")?;
            let p99 = side[step]["p99_us"].as_u64().context("p99")?;
            assert!(0 < p50 && p50 <= p99, "{step}: {stdout}");
        }
        // Every round trip asks for its reply at least once.
        assert!(
            side["polls_per_round_trip"].as_f64() >= Some(1.0),
            "{stdout}"
        );
    }
    let ratio = comparison["ours_over_guide"].as_f64().context("ratio")?;
    assert!(
        (ratio - rates[0] / rates[1]).abs() < 0.05 * ratio,
        "{stdout}"
    );
    assert!(comparison.get("guide_skipped").is_none(), "{stdout}");
    Ok(())
}
