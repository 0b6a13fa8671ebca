//! Front-end mode on tokio: one task per peer, and the link to the server in two tasks.
//!
//! A peer's task speaks ZMTP to it (greeting, READY as a ROUTER, PONGs), reads its stream
//! through an [`Assembler`] and hands each whole message to the link writer; replies come to it
//! on its own queue, charged to its outbound budget, and it writes them. The link writer takes
//! whatever the peers have handed it, encodes it into one buffer and writes it at once (many
//! peers' messages per write); the link reader decodes the server's replies and queues each on
//! its peer's task. Reading and writing the link are separate tasks: the server writes replies
//! while it waits for room to read, and one task doing both could wait on itself.
//!
//! The peer table (identity to queue) is the only state two tasks share: the peer's task adds
//! and removes its entry, the link reader looks entries up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use bytes::{Bytes, BytesMut};
use majordomo_proto::peer::assigned_identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{unix, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{lock, End, Permit, Shared};
use crate::inspect::PingContext;
use crate::mux::assemble::{Assembler, Message, Step};
use crate::mux::budget::{Budget, Charge};
use crate::mux::charge_reply;
use crate::mux::link::{
    encode_control, encode_greeting, encode_message, encode_pong, encode_ready, encode_routed,
    Control, LinkDecoder, LinkEvent,
};
use crate::Rule;

/// How much the link writer gathers before one write.
const BATCH: usize = 256 * 1024;

/// What peers hand the link writer.
enum Outgoing {
    Message(Bytes, Message),
    Control(Control),
    Pong(PingContext),
}

/// A peer's entry in the table.
struct Entry {
    replies: mpsc::UnboundedSender<(Vec<Bytes>, Charge)>,
    budget: Budget,
    queued: Arc<AtomicU64>,
    close: CancellationToken,
}

/// The link to the server, as the peers' tasks see it.
pub(super) struct Link {
    /// The link's routing identity on the server's ROUTER.
    pub(super) identity: Bytes,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    peers: Mutex<HashMap<Bytes, Entry>>,
}

impl Link {
    /// Connects to the server's private socket in the background and starts both link tasks.
    /// When the link ends, `cancel` ends the guard: no peer can be served without it.
    pub(super) fn start(shared: Arc<Shared>, cancel: CancellationToken) -> Arc<Link> {
        let (outgoing, queue) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            identity: link_identity(),
            outgoing,
            peers: Mutex::new(HashMap::new()),
        });
        let task = link.clone();
        tokio::spawn(async move {
            tokio::select! {
                end = run_link(&task, &shared, queue) => {
                    warn!(?end, "link to the server ended; the guard stops");
                }
                _ = cancel.cancelled() => {}
            }
            cancel.cancel();
            for entry in lock(&task.peers).values() {
                entry.close.cancel();
            }
        });
        link
    }

    fn send(&self, item: Outgoing) {
        // The writer outlives every peer task (the guard's cancel ends them together).
        let _ = self.outgoing.send(item);
    }
}

/// An identity no peer can announce (a zero first octet is refused from peers and reserved by
/// RFC 37 for implementations), unguessable for those that bypass the guard.
fn link_identity() -> Bytes {
    use std::hash::{BuildHasher, Hasher};
    let mut id = vec![0, b'L'];
    for round in 0..2u8 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(round);
        hasher.write_u32(std::process::id());
        id.extend_from_slice(&hasher.finish().to_be_bytes());
    }
    Bytes::from(id)
}

async fn run_link(
    link: &Link,
    shared: &Shared,
    queue: mpsc::UnboundedReceiver<Outgoing>,
) -> std::io::Result<()> {
    let stream = UnixStream::connect(&shared.socket_path).await?;
    let (read, mut write) = stream.into_split();
    let mut out = BytesMut::new();
    encode_greeting(&mut out);
    encode_ready(&mut out, b"DEALER", Some(&link.identity));
    write.write_all(&out).await?;
    tokio::select! {
        end = write_link(write, queue) => end,
        end = read_link(read, link, shared) => end,
    }
}

async fn write_link(
    mut write: unix::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(BATCH);
    let mut held = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Message(peer, message) => {
                    encode_routed(&mut out, &peer, &message.frames);
                    // Its inbound budget goes back once it is written.
                    held.push(message.charge);
                }
                Outgoing::Control(control) => encode_control(&mut out, &control),
                Outgoing::Pong(context) => encode_pong(&mut out, &context),
            }
            if out.len() < BATCH {
                next = queue.try_recv().ok();
            }
        }
        write.write_all(&out).await?;
        out.clear();
        held.clear();
    }
    Ok(())
}

async fn read_link(
    mut read: unix::OwnedReadHalf,
    link: &Link,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut decoder = LinkDecoder::new(shared.config.link_limits());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let event = match decoder.decode(&mut buf) {
            Ok(Some(event)) => event,
            Ok(None) => {
                if read.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
            Err(error) => return Err(std::io::Error::other(error)),
        };
        match event {
            LinkEvent::Routed { peer, frames } => route(link, shared, peer, frames),
            LinkEvent::Control(Control::Disconnected(peer)) => {
                if let Some(entry) = lock(&link.peers).get(&peer) {
                    entry.close.cancel();
                }
            }
            LinkEvent::Ping(context) => link.send(Outgoing::Pong(context)),
            _ => {}
        }
    }
}

/// Queues a reply on its peer, or closes the peer when it does not fit its outbound budget.
fn route(link: &Link, shared: &Shared, peer: Bytes, frames: Vec<Bytes>) {
    let peers = lock(&link.peers);
    let Some(entry) = peers.get(&peer) else {
        // The peer is gone: zmq.rs's ROUTER drops such a message too.
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if entry.close.is_cancelled() {
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match charge_reply(&entry.budget, &frames) {
        Some(charge) => {
            entry.queued.fetch_add(1, Ordering::Relaxed);
            let _ = entry.replies.send((frames, charge));
        }
        None => {
            // What is queued goes with the peer's task; this one and those are dropped.
            let dropped = entry.queued.load(Ordering::Relaxed) + 1;
            shared
                .counters
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
            entry.close.cancel();
        }
    }
}

/// Serves one accepted peer until it leaves, breaks a rule, or the guard stops.
pub(super) async fn serve_peer(
    stream: TcpStream,
    addr: SocketAddr,
    connection: u32,
    permit: Permit,
    link: Arc<Link>,
    cancel: CancellationToken,
) {
    let shared = permit.shared.clone();
    let identity = Bytes::from(assigned_identity(connection, addr));
    let close = CancellationToken::new();
    let end = tokio::select! {
        end = peer(stream, &shared, &link, &identity, &close) => end,
        _ = close.cancelled() => End::Broken(Rule::Outbound, "replies not read".into()),
        _ = cancel.cancelled() => End::Shutdown,
    };
    if lock(&link.peers).remove(&identity).is_some() {
        link.send(Outgoing::Control(Control::Disconnected(identity)));
    }
    match end {
        End::Broken(rule, detail) => shared.broken(rule, addr, &detail),
        End::Io(error) => debug!(%error, "connection failed"),
        end => debug!(?end, "connection closed"),
    }
    drop(permit);
}

async fn peer(
    stream: TcpStream,
    shared: &Shared,
    link: &Link,
    identity: &Bytes,
    close: &CancellationToken,
) -> End {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let config = &shared.config;
    let handshake_deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let mut assembler = Assembler::new(
        shared.limits,
        shared.inbound.clone(),
        config.message_timeout,
    );
    let (replies, mut queue) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicU64::new(0));
    let mut entry = Some(Entry {
        replies,
        budget: Budget::new(config.outbound_budget),
        queued: queued.clone(),
        close: close.clone(),
    });
    let mut out = BytesMut::new();
    encode_greeting(&mut out);
    if let Err(error) = write.write_all(&out).await {
        return End::Io(error);
    }
    let mut buf = BytesMut::with_capacity(512);
    loop {
        // Enabled before the budget is tried, so that no release in between is missed.
        let released = shared.inbound.released();
        tokio::pin!(released);
        released.as_mut().enable();
        let mut blocked = false;
        // One read of the clock per wake-up.
        let now = StdInstant::now();
        loop {
            let step = match assembler.next(now, &buf) {
                Ok(step) => step,
                Err(violation) => return violation.into(),
            };
            out.clear();
            match step {
                Step::Pending => break,
                Step::Blocked => {
                    blocked = true;
                    break;
                }
                Step::Consumed(n) => {
                    let _ = buf.split_to(n);
                }
                Step::Ready { consumed, ready } => {
                    let _ = buf.split_to(consumed);
                    debug!(socket_type = ?ready.socket_type, announced = ?ready.identity, "peer ready");
                    encode_ready(&mut out, b"ROUTER", None);
                    if let Some(entry) = entry.take() {
                        lock(&link.peers).insert(identity.clone(), entry);
                        link.send(Outgoing::Control(Control::Connected(identity.clone())));
                    }
                }
                Step::Ping { consumed, context } => {
                    let _ = buf.split_to(consumed);
                    encode_pong(&mut out, &context);
                    shared.counters.pongs.fetch_add(1, Ordering::Relaxed);
                }
                Step::Message { consumed, message } => {
                    let _ = buf.split_to(consumed);
                    link.send(Outgoing::Message(identity.clone(), message));
                }
            }
            if !out.is_empty() {
                if let Err(error) = write.write_all(&out).await {
                    return End::Io(error);
                }
            }
        }
        let deadline = if entry.is_some() {
            Some(handshake_deadline)
        } else {
            assembler.deadline().map(tokio::time::Instant::from_std)
        };
        // The read buffer starts small and doubles while reads fill it, up to `buffer_size`: an
        // idle or stalled peer holds well under a kilobyte.
        let room = config.buffer_size.saturating_sub(buf.len());
        if buf.capacity() == buf.len() && room > 0 {
            buf.reserve(buf.capacity().max(512).min(room));
        }
        tokio::select! {
            // read_buf is cancel-safe: nothing is consumed unless it completes.
            read = read.read_buf(&mut buf), if !blocked && room > 0 => match read {
                Ok(0) => return End::PeerClosed,
                Ok(_) => {}
                Err(error) => return End::Io(error),
            },
            // Some inbound budget came back: try again.
            _ = &mut released, if blocked => {}
            // recv is cancel-safe: a reply stays queued unless taken.
            Some(reply) = queue.recv() => {
                // A peer that does not read cannot hold the guard's write forever: past the
                // message timeout its replies are dropped and it is closed, as at its budget.
                let writing = write_replies(&mut write, reply, &mut queue, &queued);
                match tokio::time::timeout(config.message_timeout, writing).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return End::Io(error),
                    Err(_) => {
                        let dropped = queued.load(Ordering::Relaxed) + 1;
                        shared.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                        return End::Broken(Rule::Outbound, "replies not read in time".into());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(handshake_deadline)), if deadline.is_some() => {
                if entry.is_some() {
                    return End::Broken(Rule::HandshakeTimeout, "no greeting and READY in time".into());
                }
                if let Err(violation) = assembler.check(StdInstant::now()) {
                    return violation.into();
                }
            }
        }
    }
}

/// Writes `first` and whatever else is queued, in one write per batch.
async fn write_replies(
    write: &mut OwnedWriteHalf,
    first: (Vec<Bytes>, Charge),
    queue: &mut mpsc::UnboundedReceiver<(Vec<Bytes>, Charge)>,
    queued: &AtomicU64,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let mut held = Vec::new();
    let mut next = Some(first);
    while let Some((frames, charge)) = next.take() {
        encode_message(&mut out, &frames);
        held.push(charge);
        queued.fetch_sub(1, Ordering::Relaxed);
        if out.len() < BATCH {
            next = queue.try_recv().ok();
        }
    }
    write.write_all(&out).await
}
