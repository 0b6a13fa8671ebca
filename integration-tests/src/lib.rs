//! Helpers for the end-to-end tests: a broker on an ephemeral loopback port, raw zmq.rs peers that
//! speak frames directly, and the path to the Python interpreter with pyzmq.

use std::path::PathBuf;
use std::time::Duration;

use std::process::Stdio;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use majordomo_broker::{Broker, BrokerConfig, BrokerStats, HeartbeatConfig};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Heartbeat used by tests: short, so liveness rules play out in well under a second.
pub const TEST_HEARTBEAT: HeartbeatConfig = HeartbeatConfig {
    interval: Duration::from_millis(100),
    liveness: 3,
};

/// Upper bound for anything a test waits for; never an expected duration.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A broker config with [`TEST_HEARTBEAT`].
pub fn test_config() -> BrokerConfig {
    BrokerConfig {
        heartbeat: TEST_HEARTBEAT,
        ..BrokerConfig::default()
    }
}

/// A broker running on its own task.
pub struct RunningBroker {
    /// Its endpoint, e.g. `tcp://127.0.0.1:40123`.
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<BrokerStats, majordomo_broker::BrokerError>>,
}

impl RunningBroker {
    /// Binds `endpoint` (use port 0 for an ephemeral port) and runs a broker with `config`.
    pub async fn start_at(endpoint: &str, config: BrokerConfig) -> Result<Self> {
        let broker = Broker::builder()
            .bind(endpoint)
            .config(config)
            .build()
            .await?;
        let endpoint = broker.endpoints()[0].endpoint.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            endpoint,
            stop: Some(stop),
            task,
        })
    }

    /// A broker on an ephemeral loopback port.
    pub async fn start(config: BrokerConfig) -> Result<Self> {
        Self::start_at("tcp://127.0.0.1:0", config).await
    }

    /// Shuts the broker down gracefully and returns its final counters.
    pub async fn stop(mut self) -> Result<BrokerStats> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        Ok(tokio::time::timeout(PATIENCE, &mut self.task).await???)
    }

    /// Kills the broker task without the graceful DISCONNECT, like a crash.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Frames from string slices.
pub fn frames(parts: &[&[u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

/// A DEALER socket driven frame by frame.
pub struct RawPeer {
    socket: DealerSocket,
}

impl RawPeer {
    /// Connects to `endpoint`.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let mut socket = DealerSocket::new();
        tokio::time::timeout(PATIENCE, socket.connect(endpoint))
            .await
            .context("connect timed out")??;
        Ok(Self { socket })
    }

    /// Sends `frames` as one message.
    pub async fn send(&mut self, frames: Vec<Bytes>) -> Result<()> {
        let msg = ZmqMessage::try_from(frames).map_err(|_| anyhow!("empty message"))?;
        tokio::time::timeout(PATIENCE, self.socket.send(msg))
            .await
            .context("send timed out")??;
        Ok(())
    }

    /// Receives one message within `timeout`; `None` on timeout.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Option<Vec<Bytes>>> {
        match tokio::time::timeout(timeout, self.socket.recv()).await {
            Ok(msg) => Ok(Some(msg?.into_vec())),
            Err(_) => Ok(None),
        }
    }

    /// Receives one message, failing after [`PATIENCE`].
    pub async fn recv(&mut self) -> Result<Vec<Bytes>> {
        self.recv_within(PATIENCE)
            .await?
            .ok_or_else(|| anyhow!("no message within {PATIENCE:?}"))
    }

    /// Receives until a message that is not an MDP worker HEARTBEAT arrives.
    pub async fn recv_skipping_heartbeats(&mut self) -> Result<Vec<Bytes>> {
        for _ in 0..1000 {
            let msg = self.recv().await?;
            if msg != frames(&[b"", b"MDPW01", &[0x04]]) {
                return Ok(msg);
            }
        }
        Err(anyhow!("only heartbeats"))
    }
}

/// The Python interpreter of the project's virtual environment (made by
/// `scripts/setup-interop.sh`), with pyzmq installed.
pub fn python() -> Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    if python.exists() {
        Ok(python)
    } else {
        Err(anyhow!(
            "{} is missing: run scripts/setup-interop.sh first (the README's test command does)",
            python.display()
        ))
    }
}

/// Path of a script in `integration-tests/python/`.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// A Python peer from `integration-tests/python/`, killed when dropped; its stdout is read line by
/// line.
pub struct PyPeer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyPeer {
    /// Starts `script` with `args` under the project's Python.
    pub fn spawn(script: &str, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(python()?)
            .arg(python_script(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {script}"))?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Self { child, lines })
    }

    /// The next line the peer prints, within [`PATIENCE`].
    pub async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .context("no output from python peer")??
            .context("python peer closed its output")
    }

    /// The endpoint a peer announces with a first line `endpoint tcp://...`.
    pub async fn endpoint(&mut self) -> Result<String> {
        let line = self.line().await?;
        Ok(line
            .strip_prefix("endpoint ")
            .with_context(|| format!("expected an endpoint line, got {line:?}"))?
            .to_owned())
    }

    /// Waits for the peer to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Result<i32> {
        let status = tokio::time::timeout(PATIENCE, self.child.wait()).await??;
        Ok(status.code().unwrap_or(-1))
    }
}
