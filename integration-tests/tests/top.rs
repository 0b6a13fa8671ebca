//! `majordomo top` in a real terminal: tmux runs it against a broker with a worker, the test
//! reads the screen with `capture-pane` and types with `send-keys`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use integration_tests::{free_endpoint, majordomo_bin, wait_for_service, Proc, PATIENCE};

/// A tmux server of this test's own (its own socket, no configuration file), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts a detached 120x40 session running `command` in `sh`.
    fn start(command: &str) -> Result<Self> {
        let socket =
            std::env::temp_dir().join(format!("majordomo-top-{}.sock", std::process::id()));
        let tmux = Self { socket };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "40",
            "sh",
            "-c",
            command,
        ])?;
        if !out.status.success() {
            bail!("tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .context("running tmux (installed by scripts/setup-interop.sh)")
    }

    /// The screen, line by line.
    fn screen(&self) -> Result<String> {
        let out = self.run(&["capture-pane", "-p", "-t", "top"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn keys(&self, keys: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "top", keys])?;
        Ok(())
    }

    /// Polls the screen until `done` holds; fails with the last screen after [`PATIENCE`].
    async fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen()?;
            if done(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{what}: not within {PATIENCE:?}; the screen:\n{screen}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The cells of the screen line of `service` in the services table.
fn service_line(screen: &str, service: &str) -> Option<Vec<String>> {
    screen
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(service))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_live_service_goes_stale_without_its_broker_and_quits_on_q() -> Result<()> {
    let ep = free_endpoint()?;
    let mut broker = Proc::spawn(&["broker", "--bind", &ep])?;
    let _worker = Proc::spawn(&["worker", "echo", "--connect", &ep])?;
    wait_for_service(&ep, "echo").await?;
    let bin = majordomo_bin()?;
    // The shell compares the terminal's settings before and after, and says how top exited;
    // then it waits, so that the pane stays to be read.
    let command = format!(
        "before=$(stty -g); '{}' top --connect {ep} --interval 200ms --timeout 300ms; rc=$?; \
         if [ \"$before\" = \"$(stty -g)\" ]; then t=restored; else t=changed; fi; \
         echo \"top exited $rc, terminal $t\"; sleep 600",
        bin.display()
    );
    let tmux = Tmux::start(&command)?;

    // The worker's service with its counts: nothing queued, one idle worker, none busy.
    let screen = tmux
        .wait_for("the echo service with one idle worker", |screen| {
            service_line(screen, "echo").is_some_and(|cells| cells[1..4] == ["0", "1", "0"])
        })
        .await?;
    assert!(screen.starts_with("majordomo top"), "{screen}");
    assert!(screen.contains("workers 1 (1 idle, 0 busy)"), "{screen}");

    // s sorts by the next column.
    tmux.keys("s")?;
    tmux.wait_for("sorted by queued", |screen| {
        screen.contains("sorted by queued descending")
    })
    .await?;

    // Without its broker the last data stays, marked stale.
    broker.signal("KILL")?;
    broker.wait_exit().await?;
    let screen = tmux
        .wait_for("the stale mark", |screen| screen.contains("STALE"))
        .await?;
    assert!(service_line(&screen, "echo").is_some(), "{screen}");
    assert!(screen.contains("no answer:"), "{screen}");

    // q: exit status 0, the terminal as it was, the full-screen view gone.
    tmux.keys("q")?;
    let screen = tmux
        .wait_for("top exited", |screen| screen.contains("top exited"))
        .await?;
    assert!(
        screen.contains("top exited 0, terminal restored"),
        "{screen}"
    );
    assert!(!screen.contains("majordomo top"), "{screen}");
    Ok(())
}
