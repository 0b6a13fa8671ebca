//! The CURVE runs: the broker's keys for a run, the bridge its clients connect through, and
//! the handshake rate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use majordomo_rt::transport::DealerConnector;
use majordomo_zmtp::curve::{encode_greeting, CurveClient, CurveKeyPair};
use majordomo_zmtp::inspect::FrameLimits;
use majordomo_zmtp::outbound::CurveOutbound;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::load::{Window, DRAIN, MEASURE};
use super::report::Run;
use super::targets::{spawn_broker, GuardMode};
use super::{BenchArgs, RunKind};
use crate::endpoint::{free_endpoint, Transport};

/// A broker key pair for one run, its certificate in a scratch directory removed at the end.
pub(super) struct CurveSetup {
    dir: PathBuf,
    keys: CurveKeyPair,
}

impl CurveSetup {
    /// A new pair, saved as `server` and `server_secret`.
    pub(super) fn new() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "majordomo-bench-curve-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let keys = CurveKeyPair::generate();
        keys.save(&dir.join("server"))?;
        Ok(Self { dir, keys })
    }

    /// The secret certificate, for `--curve-secret-key-file`.
    pub(super) fn secret_file(&self) -> String {
        self.dir.join("server_secret").display().to_string()
    }

    /// The public key in Z85, for `--curve-server-key`.
    pub(super) fn public_z85(&self) -> String {
        self.keys.public().to_z85()
    }

    /// A connector to the broker at `endpoint` through a bridge of its own, for an in-process
    /// worker.
    pub(super) fn outbound_connector(&self, endpoint: &str) -> Result<DealerConnector> {
        Ok(DealerConnector::curve(
            endpoint,
            self.keys.public(),
            Arc::new(CurveKeyPair::generate()),
        )?)
    }

    /// A bridge to the broker at `endpoint` (`tcp://`), with a key pair of its own.
    pub(super) fn outbound(&self, endpoint: &str) -> Result<CurveOutbound> {
        let remote = endpoint
            .strip_prefix("tcp://")
            .context("CURVE runs need tcp://")?;
        Ok(CurveOutbound::new(
            remote,
            self.keys.public(),
            Arc::new(CurveKeyPair::generate()),
            FrameLimits::from(&majordomo_broker::Limits::default()),
        ))
    }
}

impl Drop for CurveSetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of the next command from `stream`.
async fn command(stream: &mut tokio::net::TcpStream, buf: &mut BytesMut) -> Result<BytesMut> {
    loop {
        if let Some(&flags) = buf.first() {
            let (header, size) = if flags & 0x02 == 0 {
                (2, buf.get(1).map(|&s| usize::from(s)))
            } else {
                let size = buf
                    .get(1..9)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("eight bytes")) as usize);
                (9, size)
            };
            if let Some(size) = size {
                if buf.len() >= header + size {
                    buf.advance(header);
                    return Ok(buf.split_to(size));
                }
            }
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("the broker closed a handshake");
        }
    }
}

/// One CURVE handshake with the broker at `addr`, then the connection is closed.
async fn handshake(addr: &str, server: &CurveKeyPair, keys: &Arc<CurveKeyPair>) -> Result<()> {
    let mut rng = crypto_box::aead::OsRng;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let mut client = CurveClient::new(&mut rng, server.public(), keys.clone());
    let mut out = BytesMut::new();
    encode_greeting(&mut out, false);
    client.hello(&mut out);
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    while buf.len() < 64 {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("the broker closed a handshake");
        }
    }
    buf.advance(64);
    let welcome = command(&mut stream, &mut buf).await?;
    out.clear();
    client.welcome(
        &mut rng,
        &welcome,
        b"\x0bSocket-Type\x00\x00\x00\x06DEALER",
        &mut out,
    )?;
    stream.write_all(&out).await?;
    let ready = command(&mut stream, &mut buf).await?;
    client.ready(&ready)?;
    Ok(())
}

/// The `curve-handshakes` run: `clients` tasks each opening CURVE connections to the broker one
/// after another, each closed once READY arrives; handshakes per second over the measured time,
/// and the broker's CPU per 100,000.
pub(super) async fn handshakes(args: &BenchArgs, threads: &str) -> Result<Run> {
    let setup = CurveSetup::new()?;
    let endpoint = free_endpoint(Transport::Tcp)?;
    // The guard admits 1,000 new connections a second from one address by default: a policy,
    // lifted here to measure what the handshake itself costs.
    let broker = spawn_broker(
        &endpoint,
        threads,
        GuardMode::Curve,
        Some(&setup),
        &["--guard-connection-rate", "1000000"],
    )?;
    let addr = endpoint.trim_start_matches("tcp://").to_owned();
    let server = Arc::new(setup.keys.clone());
    // The broker listens once a handshake succeeds.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let keys = Arc::new(CurveKeyPair::generate());
    while handshake(&addr, &server, &keys).await.is_err() {
        if Instant::now() > deadline {
            bail!("the CURVE broker did not come up");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let phase = Arc::new(AtomicU8::new(super::load::WARMUP));
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let (addr, server, phase) = (addr.clone(), server.clone(), phase.clone());
            let keys = Arc::new(CurveKeyPair::generate());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                loop {
                    let now = phase.load(Ordering::Relaxed);
                    if now == DRAIN {
                        return (latencies, errors);
                    }
                    let started = Instant::now();
                    match handshake(&addr, &server, &keys).await {
                        Ok(()) if now == MEASURE => {
                            latencies.push(started.elapsed().as_micros() as u32)
                        }
                        Ok(()) => {}
                        Err(error) => errors.push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    let window = Window::run(args, broker.pid(), &phase).await?;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors.extend(e);
    }
    anyhow::ensure!(
        errors.is_empty(),
        "handshakes failed: {}",
        errors.join("; ")
    );
    let done = latencies.len() as u64;
    window.into_run(
        RunKind::CurveHandshakes,
        0,
        args.clients,
        1,
        done,
        latencies,
    )
}
