//! Helpers for the end-to-end tests: a broker on an ephemeral loopback port, raw zmq.rs peers that
//! speak frames directly, and the path to the Python interpreter with pyzmq.

use std::path::PathBuf;
use std::time::Duration;

use std::process::Stdio;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use majordomo_broker::{
    Broker, BrokerConfig, BrokerHandle, BrokerStats, HeartbeatConfig, ServiceStats,
};
use majordomo_rt::server::ServerHandle;
use majordomo_rt::transport::{Connector, DealerConnector, TransportError};
use majordomo_tools::{child, endpoint};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Heartbeat used by tests: short, so liveness rules play out in well under a second.
pub const TEST_HEARTBEAT: HeartbeatConfig = HeartbeatConfig::new(Duration::from_millis(100), 3);

/// Upper bound for anything a test waits for; never an expected duration.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A broker config with [`TEST_HEARTBEAT`].
pub fn test_config() -> BrokerConfig {
    BrokerConfig::default().heartbeat(TEST_HEARTBEAT)
}

/// A broker running on its own task.
pub struct RunningBroker {
    /// Its endpoint, e.g. `tcp://127.0.0.1:40123`.
    pub endpoint: String,
    /// Its handle, for stats while it runs.
    pub handle: BrokerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<BrokerStats, majordomo_broker::BrokerError>>,
}

impl RunningBroker {
    /// Binds `endpoint` (use port 0 for an ephemeral port) and runs a broker with `config`.
    pub async fn start_at(endpoint: &str, config: BrokerConfig) -> Result<Self> {
        // A broker just stopped on the same port may hold its listener a moment longer.
        let mut last = None;
        for _ in 0..100 {
            match Broker::builder()
                .bind(endpoint)
                .config(config.clone())
                .build()
                .await
            {
                Ok(broker) => return Ok(Self::run(broker)),
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.expect("tried at least once").into())
    }

    /// Runs an already bound broker; `endpoint` is its first endpoint.
    pub fn run(broker: Broker) -> Self {
        let endpoint = broker.endpoints()[0].endpoint.clone();
        let handle = broker.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker.run(async {
            let _ = stopped.await;
        }));
        Self {
            endpoint,
            handle,
            stop: Some(stop),
            task,
        }
    }

    /// A broker on an ephemeral loopback port.
    pub async fn start(config: BrokerConfig) -> Result<Self> {
        Self::start_at("tcp://127.0.0.1:0", config).await
    }

    /// The broker's counters and gauges now.
    pub async fn stats(&self) -> Result<BrokerStats> {
        self.handle.stats().await.context("the broker has stopped")
    }

    /// Polls the broker's stats until `done` holds and returns them; fails after [`PATIENCE`]
    /// with `what` and the last stats.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl FnMut(&BrokerStats) -> bool,
    ) -> Result<BrokerStats> {
        wait_for_stats(&self.handle, what, done).await
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

    /// Kills the broker task like [`RunningBroker::kill`] and waits until it has ended, so its
    /// sockets are closed and its port is free.
    pub async fn crash(self) -> Result<()> {
        self.task.abort();
        match tokio::time::timeout(PATIENCE, self.task).await? {
            Err(error) if error.is_cancelled() => Ok(()),
            Err(error) => Err(error.into()),
            Ok(ended) => {
                ended?;
                Ok(())
            }
        }
    }
}

/// Polls a server's stats (a broker's or a Pirate queue's handle) until `done` holds and returns
/// them, pausing briefly between reads; fails after [`PATIENCE`] with `what` and the last stats.
pub async fn wait_for_stats<S: Send + std::fmt::Debug + 'static>(
    handle: &ServerHandle<S>,
    what: &str,
    mut done: impl FnMut(&S) -> bool,
) -> Result<S> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = handle.stats().await.context("the server has stopped")?;
        if done(&stats) {
            return Ok(stats);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "{what}: not within {PATIENCE:?}; last stats {stats:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The gauges of `service` in `stats`, if the broker knows it.
pub fn service_stats<'a>(stats: &'a BrokerStats, service: &[u8]) -> Option<&'a ServiceStats> {
    stats
        .per_service
        .iter()
        .find(|s| s.name.as_ref() == service)
}

/// Registered workers of `service` (idle and busy) in `stats`.
pub fn service_workers(stats: &BrokerStats, service: &[u8]) -> usize {
    service_stats(stats, service).map_or(0, |s| s.idle_workers + s.busy_workers)
}

/// A DEALER connector that counts the connections it opens, for tests that watch a worker
/// reconnect: [`CountingConnector::connects`] is the number of connection attempts begun so far.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: DealerConnector,
    count: watch::Sender<usize>,
}

impl CountingConnector {
    /// A connector for `endpoint` that has opened nothing yet.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            inner: DealerConnector::new(endpoint),
            count: watch::channel(0).0,
        }
    }

    /// Connection attempts begun so far, to wait on (`wait_for(|n| *n >= 2)`).
    pub fn connects(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

impl Connector for CountingConnector {
    type Conn = DealerSocket;

    fn connect(
        &self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<DealerSocket, TransportError>> + Send {
        self.count.send_modify(|n| *n += 1);
        self.inner.connect(timeout)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A loopback endpoint on a port that was free a moment ago, for tests that must restart a
/// server on the same port.
pub fn free_endpoint() -> Result<String> {
    endpoint::free_endpoint(endpoint::Transport::Tcp)
}

/// A fresh, empty directory named after `name` under the system's temporary directory,
/// removed with what it holds when dropped, whether the test passed or not.
pub fn scratch_dir(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("majordomo-{name}-"))
        .tempdir()?)
}

/// Asks `mmi.service` until `service` has a live worker, within a bounded number of tries.
pub async fn wait_for_service(endpoint: &str, service: &str) -> Result<()> {
    let client = majordomo_client::Client::new(
        endpoint,
        majordomo_client::ClientConfig::default()
            .timeout(Duration::from_millis(300))
            .attempts(1),
    );
    for _ in 0..250 {
        let status = client
            .request(
                "mmi.service",
                vec![Bytes::copy_from_slice(service.as_bytes())],
            )
            .await;
        if matches!(status.as_deref(), Ok([code]) if code.as_ref() == b"200") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(anyhow!("{service} never registered"))
}

/// A raw 7/MDP worker REPLY: `[empty, "MDPW01", 0x03, client, empty, body...]`.
pub fn worker_reply(client: Bytes, body: &[&[u8]]) -> Vec<Bytes> {
    let mut reply = frames(&[b"", b"MDPW01", &[0x03]]);
    reply.push(client);
    reply.push(Bytes::new());
    reply.extend(body.iter().map(|b| Bytes::copy_from_slice(b)));
    reply
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
        Self::spawn_with(&[python_script(script).as_os_str()], args, script, &[])
    }

    /// Starts `script` with `args` and these environment variables set.
    pub fn spawn_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_with(&[python_script(script).as_os_str()], args, script, env)
    }

    /// Runs the installed Python module `module` (`python -m MODULE ARGS...`).
    pub fn spawn_module(module: &str, args: &[&str]) -> Result<Self> {
        Self::spawn_with(&["-m".as_ref(), module.as_ref()], args, module, &[])
    }

    fn spawn_with(
        first: &[&std::ffi::OsStr],
        args: &[&str],
        script: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut child = Command::new(python()?)
            .args(first)
            .args(args)
            .envs(env.iter().copied())
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

    /// The next line the peer prints within `timeout`; `None` if it prints none in that time.
    pub async fn line_within(&mut self, timeout: Duration) -> Result<Option<String>> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Err(_) => Ok(None),
            Ok(line) => Ok(Some(line?.context("python peer closed its output")?)),
        }
    }

    /// Waits for the peer to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Result<i32> {
        self.exit_code_within(PATIENCE).await
    }

    /// Waits up to `timeout` for the peer to exit and returns its exit code.
    pub async fn exit_code_within(&mut self, timeout: Duration) -> Result<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("python peer still running after {timeout:?}"))??;
        Ok(status.code().unwrap_or(-1))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the peer with SIGKILL, as `kill -9` does (its sockets are closed by the kernel, with
    /// no goodbye), and waits until it has ended.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("python peer survived SIGKILL")??;
        Ok(())
    }
}

/// Asks the broker at `endpoint` for `mmi.stats` (a few attempts of a second each).
pub async fn mmi_stats(endpoint: &str) -> Result<BrokerStats> {
    let client = majordomo_client::Client::new(
        endpoint,
        majordomo_client::ClientConfig::default()
            .timeout(Duration::from_secs(1))
            .attempts(3),
    );
    let reply = client.request("mmi.stats", vec![Bytes::new()]).await?;
    match reply.as_slice() {
        [code, json] if code.as_ref() == b"200" => Ok(serde_json::from_slice(json)?),
        other => Err(anyhow!("mmi.stats answered {other:?}")),
    }
}

/// Asks `mmi.stats` until `done` holds and returns those stats; fails after [`PATIENCE`] with
/// `what` and the last stats.
pub async fn wait_for_mmi_stats(
    endpoint: &str,
    what: &str,
    mut done: impl FnMut(&BrokerStats) -> bool,
) -> Result<BrokerStats> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = mmi_stats(endpoint).await?;
        if done(&stats) {
            return Ok(stats);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "{what}: not within {PATIENCE:?}; last stats {stats:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `majordomo` binary built alongside the tests (`target/<profile>/majordomo`).
pub fn majordomo_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/majordomo
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no target directory")?;
    let bin = dir.join("majordomo");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(anyhow!(
            "{} is missing: run `cargo build --workspace --bins` first (the README's test command does)",
            bin.display()
        ))
    }
}

/// A `majordomo` process logging at `info` to a captured stderr, killed with SIGKILL when
/// dropped.
pub struct Proc(child::Child);

impl Proc {
    /// Starts `majordomo` with `args`.
    pub fn spawn(args: &[&str]) -> Result<Self> {
        Self::spawn_env(args, &[])
    }

    /// Starts `majordomo` with `args` and the variables `env` added to its environment.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Ok(Self(child::Child::spawn_env(
            majordomo_bin()?,
            args,
            env,
            "info",
            child::Stderr::Capture,
        )?))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        self.0.signal(name)
    }

    /// Whether the process has exited, without waiting.
    pub fn has_exited(&mut self) -> Result<bool> {
        self.0.has_exited()
    }

    /// Waits up to [`PATIENCE`] for the process to exit and returns how it ended.
    pub async fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        self.0.wait_exit(PATIENCE).await
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        self.0.stderr_text()
    }

    /// Resident memory in KiB (`VmRSS` from /proc).
    pub fn rss_kib(&self) -> Result<u64> {
        Ok(self.0.memory()?.rss_kib)
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Waits until this process, a broker, serves at `endpoint` (`mmi.service` answers `404` for
    /// a name nobody serves); fails at once, with its log, if it exits first (e.g. on an option
    /// it does not know), and after [`PATIENCE`] otherwise.
    pub async fn wait_until_serving(&mut self, endpoint: &str) -> Result<()> {
        let client = majordomo_client::Client::new(
            endpoint,
            majordomo_client::ClientConfig::default()
                .timeout(Duration::from_millis(300))
                .attempts(1),
        );
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if self.has_exited()? {
                return Err(anyhow!(
                    "the broker exited before serving at {endpoint}: {}",
                    self.log()
                ));
            }
            let status = client
                .request("mmi.service", vec![Bytes::from_static(b"nobody")])
                .await;
            if matches!(status.as_deref(), Ok([code]) if code.as_ref() == b"404") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(anyhow!(
            "the broker never served at {endpoint} within {PATIENCE:?}: {}",
            self.log()
        ))
    }
}

/// A hand-made ZMTP 3.0 peer on a plain TCP stream: it can announce frames it never sends and
/// never read what it is sent, which no well-behaved socket library does.
pub struct RawZmtp {
    stream: Box<dyn RawStream>,
}

/// A byte stream [`RawZmtp`] speaks over: TCP or Unix.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for S {}

impl RawZmtp {
    /// The 64-byte ZMTP 3.0 greeting with the NULL mechanism.
    pub fn greeting() -> Vec<u8> {
        let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
        let mut mechanism = b"NULL".to_vec();
        mechanism.resize(20, 0);
        greeting.extend(mechanism);
        greeting.push(0); // as-server
        greeting.resize(64, 0);
        greeting
    }

    /// A plain TCP connection to `tcp://host:port` from the local address `source` (any
    /// address of 127.0.0.0/8 works on Linux loopback), with nothing sent yet.
    pub async fn tcp_from(
        endpoint: &str,
        source: std::net::IpAddr,
    ) -> Result<tokio::net::TcpStream> {
        let addr: std::net::SocketAddr = endpoint
            .strip_prefix("tcp://")
            .context("tcp endpoints only")?
            .parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        Ok(socket.connect(addr).await?)
    }

    /// Connects to `tcp://host:port` or `ipc://path` and performs the NULL-mechanism handshake
    /// as a DEALER.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        if let Some(path) = endpoint.strip_prefix("ipc://") {
            return Self::handshake(tokio::net::UnixStream::connect(path).await?).await;
        }
        let addr = endpoint
            .strip_prefix("tcp://")
            .context("tcp or ipc endpoints only")?;
        Self::handshake(tokio::net::TcpStream::connect(addr).await?).await
    }

    /// As [`RawZmtp::connect`], from the local address `source`.
    pub async fn connect_from(endpoint: &str, source: std::net::IpAddr) -> Result<Self> {
        Self::handshake(Self::tcp_from(endpoint, source).await?).await
    }

    async fn handshake(mut stream: impl RawStream + 'static) -> Result<Self> {
        use tokio::io::AsyncWriteExt;
        stream.write_all(&Self::greeting()).await?;
        let mut body = vec![5];
        body.extend(b"READY");
        body.push(11);
        body.extend(b"Socket-Type");
        body.extend(6u32.to_be_bytes());
        body.extend(b"DEALER");
        let mut command = vec![0x04, body.len() as u8];
        command.extend(body);
        stream.write_all(&command).await?;
        Ok(Self {
            stream: Box::new(stream),
        })
    }

    /// Sends one multipart message.
    pub async fn send(&mut self, frames: &[&[u8]]) -> Result<()> {
        self.send_repeated(frames, 1).await
    }

    /// Sends the same multipart message `count` times, many per write.
    pub async fn send_repeated(&mut self, frames: &[&[u8]], count: usize) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let one = Self::encode(frames);
        let mut left = count;
        while left > 0 {
            let batch = left.min(1024);
            self.stream.write_all(&one.repeat(batch)).await?;
            left -= batch;
        }
        Ok(())
    }

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { 0x01 } else { 0x00 };
            if frame.len() < 256 {
                out.push(more);
                out.push(frame.len() as u8);
            } else {
                out.push(more | 0x02);
                out.extend((frame.len() as u64).to_be_bytes());
            }
            out.extend_from_slice(frame);
        }
        out
    }

    /// Sends a ZMTP command `name` with `data` (e.g. `PING` with a TTL and a context).
    pub async fn send_command(&mut self, name: &[u8], data: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(data);
        let mut out = vec![0x04, u8::try_from(body.len()).context("a short command")?];
        out.extend(body);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Writes the header of a final frame announcing `size` bytes, and nothing of its body.
    pub async fn announce_frame(&mut self, size: u64) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut out = vec![0x02];
        out.extend(size.to_be_bytes());
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Writes the header of a final frame announcing `size` bytes and the first `sent` bytes of
    /// its body, and no more.
    pub async fn send_partial_frame(&mut self, size: u64, sent: usize) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut out = vec![0x02];
        out.extend(size.to_be_bytes());
        out.resize(out.len() + sent, 0x5a);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Waits up to `patience` for the other end to close the connection, discarding what it
    /// sends meanwhile; whether it closed.
    pub async fn closed_within(&mut self, patience: Duration) -> Result<bool> {
        Ok(closed_within(&mut self.stream, patience).await)
    }
}

/// Waits up to `patience` for the other end of `stream` to close it (end of stream or reset),
/// discarding what it sends meanwhile; whether it closed.
pub async fn closed_within<S>(stream: &mut S, patience: Duration) -> bool
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(patience, read_to_end).await.is_ok()
}

/// A worker handler that sends `parts` parts ("part 0", "part 1", ...) and then the request as
/// its last part.
pub fn parts_then_echo(parts: usize) -> impl majordomo_worker::StreamHandler {
    use majordomo_worker::{stream_handler_fn, BoxError, Responder};
    stream_handler_fn(
        move |body: Vec<Bytes>, mut responder: Responder| async move {
            for n in 0..parts {
                responder
                    .send(vec![Bytes::from(format!("part {n}"))])
                    .await?;
            }
            Ok::<_, BoxError>(body)
        },
    )
}

/// A future that completes once its sender fires or is dropped: a worker's shutdown in tests.
#[derive(Debug)]
pub struct Stopped(oneshot::Receiver<()>);

impl std::future::Future for Stopped {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Spawns `serve` (a worker's `run` or `run_streaming`, handed its shutdown) on a task; the
/// sender returned stops it, by firing or by being dropped.
pub fn spawn_until_stopped<F, Fut>(serve: F) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    F: FnOnce(Stopped) -> Fut,
    Fut: std::future::Future<Output = Result<(), majordomo_worker::WorkerError>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel();
    let served = serve(Stopped(stopped));
    let task = tokio::spawn(async move {
        served.await.expect("valid worker configuration");
    });
    (stop, task)
}

/// HTTP helpers for the servers' metrics and health listener.
pub mod http {
    use std::time::Duration;

    use anyhow::{Context, Result};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::PATIENCE;

    /// A free `127.0.0.1:PORT` for the metrics listener.
    pub fn free_addr() -> Result<String> {
        Ok(format!(
            "127.0.0.1:{}",
            majordomo_tools::endpoint::free_tcp_port()?
        ))
    }

    /// `GET path` over HTTP/1.0: the status code and the body.
    pub async fn get(addr: &str, path: &str) -> Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
            .await
            .context("no HTTP response")??;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("an HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .context("a status line")?
            .parse()?;
        Ok((status, body.to_owned()))
    }

    /// Retries `GET path` until the metrics listener answers (it starts with the broker).
    pub async fn get_when_up(addr: &str, path: &str) -> Result<(u16, String)> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match get(addr, path).await {
                Ok(answer) => return Ok(answer),
                Err(error) if tokio::time::Instant::now() > deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The value of the sample `name` (with its labels, as written) in a Prometheus text page.
    pub fn sample(page: &str, name: &str) -> Option<f64> {
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// The README's Rust examples, compiled (and the first one run) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
