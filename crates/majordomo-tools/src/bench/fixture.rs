//! The servers the benchmark measures the transport with, each run by the
//! `majordomo-bench-fixture` binary as a process of its own: a raw ROUTER echo server (the
//! ceiling's other end), a two-hop forwarder with no protocol at all and its echo peers (what
//! the transport allows any broker), and a byte-copying TCP-to-Unix proxy (what a relay hop
//! costs without reading the stream).

use std::collections::{HashMap, VecDeque};

use anyhow::Result;
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::FutureExt;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::load::connect;

/// A fixture, as `majordomo-bench-fixture` names it on its command line.
#[derive(Subcommand)]
pub enum Fixture {
    /// The raw ROUTER echo server the ceiling is measured against.
    Echo(EchoArgs),
    /// A two-hop forwarder with no protocol, the transport's limit for a broker.
    Relay(RelayArgs),
    /// An echo peer of `relay`.
    RelayPeer(RelayPeerArgs),
    /// A byte-copying TCP-to-Unix proxy, the cost of a relay hop without the guard's reading.
    CopyRelay(CopyRelayArgs),
}

impl Fixture {
    /// Runtime threads the fixture wants (1: a single-threaded runtime, 0: one per core).
    pub fn threads(&self) -> usize {
        match self {
            Fixture::Echo(args) => args.threads,
            Fixture::Relay(args) => args.threads,
            Fixture::RelayPeer(_) | Fixture::CopyRelay(_) => 1,
        }
    }

    /// Serves until an error (a fixture is stopped by a signal).
    pub async fn run(self) -> Result<()> {
        match self {
            Fixture::Echo(args) => echo(args).await,
            Fixture::Relay(args) => relay(args).await,
            Fixture::RelayPeer(args) => relay_peer(args).await,
            Fixture::CopyRelay(args) => copy_relay(args).await,
        }
    }
}

/// Options of the echo server.
#[derive(Args)]
pub struct EchoArgs {
    /// Endpoint to bind.
    #[arg(long)]
    bind: String,
    /// Runtime threads (1: single-threaded runtime, 0: one per core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The ceiling's server: echoes every message back to its sender.
async fn echo(args: EchoArgs) -> Result<()> {
    let mut socket = RouterSocket::new();
    socket.bind(&args.bind).await?;
    loop {
        let msg = socket.recv().await?;
        if msg.len() >= 2 {
            socket.send(msg).await?;
        }
    }
}

/// Options of the relay.
#[derive(Args)]
pub struct RelayArgs {
    /// Endpoint to bind, for clients and echo peers alike.
    #[arg(long)]
    bind: String,
    /// Requests in flight per echo peer (1: 7/MDP's shape; 0: no limit).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Runtime threads (1: single-threaded runtime, 0: one per core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Options of an echo peer of the relay.
#[derive(Args)]
pub struct RelayPeerArgs {
    /// The relay's endpoint.
    #[arg(long)]
    pub(super) connect: String,
}

/// The relay: clients send `[empty, body]`; peers announce themselves with one `[ready]` frame
/// and then echo what they are given. Requests go to peers with room in their window, oldest
/// first, and replies straight back to their client: the routing a 7/MDP broker does, without
/// parsing, validation, services, heartbeats or expiry. Its loop is the broker's: take what is
/// ready (up to a batch), then send what it caused, and yield after a full batch.
async fn relay(args: RelayArgs) -> Result<()> {
    let mut socket = RouterSocket::new();
    socket.bind(&args.bind).await?;
    let mut relay = Relay {
        window: if args.window == 0 {
            usize::MAX
        } else {
            args.window
        },
        load: HashMap::new(),
        ready: VecDeque::new(),
        pending: VecDeque::new(),
        out: Vec::new(),
    };
    loop {
        relay.handle(socket.recv().await?);
        let mut full = true;
        for _ in 1..RELAY_BATCH {
            match socket.recv().now_or_never() {
                Some(msg) => relay.handle(msg?),
                None => {
                    full = false;
                    break;
                }
            }
        }
        for msg in relay.out.drain(..) {
            // A peer that left loses its message, as with a broker; the bench counts it lost.
            if let Err(error) = socket.send(msg).await {
                tracing::warn!(%error, "relay: send failed");
            }
        }
        if full {
            tokio::task::yield_now().await;
        }
    }
}

/// Most messages the relay takes before it sends what they caused, as the broker does.
const RELAY_BATCH: usize = 64;

/// The relay's state.
struct Relay {
    /// Most requests one peer holds.
    window: usize,
    /// Peers and how many requests each holds.
    load: HashMap<Bytes, usize>,
    /// The peers with room, each once.
    ready: VecDeque<Bytes>,
    /// Requests waiting for a peer.
    pending: VecDeque<Vec<Bytes>>,
    /// Messages to send.
    out: Vec<ZmqMessage>,
}

impl Relay {
    fn handle(&mut self, msg: ZmqMessage) {
        let mut frames = msg.into_vec();
        if frames.len() < 2 {
            return;
        }
        let from = frames[0].clone();
        if let Some(held) = self.load.get_mut(&from) {
            // A reply `[peer, client, empty, body]`: back to its client.
            if *held == self.window {
                self.ready.push_back(from);
            }
            *held -= 1;
            frames.remove(0);
            self.out.push(ZmqMessage::try_from(frames).expect("frames"));
        } else if frames.len() == 2 && frames[1].as_ref() == b"ready" {
            self.load.insert(from.clone(), 0);
            self.ready.push_back(from);
        } else {
            self.pending.push_back(frames);
        }
        while !self.pending.is_empty() {
            let Some(peer) = self.ready.pop_front() else {
                break;
            };
            let mut request = self.pending.pop_front().expect("not empty");
            request.insert(0, peer.clone());
            let held = self.load.get_mut(&peer).expect("known peer");
            *held += 1;
            if *held < self.window {
                self.ready.push_back(peer);
            }
            self.out
                .push(ZmqMessage::try_from(request).expect("frames"));
        }
    }
}

/// A relay peer: announces itself, then echoes every request.
pub(super) async fn relay_peer(args: RelayPeerArgs) -> Result<()> {
    let mut socket = connect(&args.connect).await?;
    socket.send(ZmqMessage::from("ready")).await?;
    loop {
        let msg = socket.recv().await?;
        socket.send(msg).await?;
    }
}

/// Options of the copy relay: a proxy that copies bytes between each TCP connection it accepts
/// and a new connection to a Unix socket, reading nothing: what the guard's relay hop costs
/// without the guard's reading of the stream.
#[derive(Args)]
pub struct CopyRelayArgs {
    /// TCP address to listen on (host:port).
    #[arg(long)]
    listen: String,
    /// Unix socket path to connect each connection to.
    #[arg(long)]
    upstream: std::path::PathBuf,
}

/// The copy relay: one task per connection, `copy_bidirectional` until either side closes.
async fn copy_relay(args: CopyRelayArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    loop {
        let (mut peer, _) = listener.accept().await?;
        peer.set_nodelay(true)?;
        let upstream = args.upstream.clone();
        tokio::spawn(async move {
            if let Ok(mut server) = tokio::net::UnixStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut peer, &mut server).await;
            }
        });
    }
}
