//! Front-end mode on tokio: one task per peer, and the link to the server in two tasks.
//!
//! A peer's task speaks ZMTP to it (greeting, READY as a ROUTER, PONGs), reads its stream
//! through an [`Assembler`] and hands each whole message to the link writer; replies come to it
//! on its own queue, charged to its outbound budget, and it writes them, as it writes its own
//! answers, in the same select as it reads: no write holds the task. The link writer takes
//! whatever the peers have handed it, encodes it into one buffer and writes it at once (many
//! peers' messages per write); the link reader decodes the server's replies and queues each on
//! its peer's task. The link is one queue for every peer: a peer's task stops reading its peer
//! while [`LINK_ALLOWANCE`] bytes of its messages wait there, so a flooding peer's messages
//! cannot queue far ahead of everyone else's. Reading and writing the link are separate tasks: the server writes replies
//! while it waits for room to read, and one task doing both could wait on itself.
//!
//! The peer table (identity to queue) is the only state two tasks share, with the link's
//! generation, changed under the table's lock: the peer's task adds and removes its entry, the
//! link reader looks entries up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{unix, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{lock, End, PeerAddr, PeerStream, Permit, Shared};
use crate::inspect::PingContext;
use crate::mux::assemble::{Message, Step};
use crate::mux::budget::{Allowance, Budget, Charge, Queued};
use crate::mux::link::{
    encode_control, encode_greeting, encode_pong, encode_ready, encode_routed, Control,
    LinkDecoder, LinkEvent,
};
use crate::mux::secure::PeerCodec;
use crate::mux::{charge_reply, LINK_ALLOWANCE};
use crate::Rule;

/// How much the link writer gathers before one write.
const BATCH: usize = 256 * 1024;
/// The link reader's buffer, grown while a larger reply arrives.
const LINK_READ: usize = 64 * 1024;
/// Most bytes of its own answers (PONGs) the guard queues for a peer that does not read them:
/// past this, the peer is not read until they are written.
const OWN_OUTPUT: usize = 64 * 1024;
/// What a peer holding inbound budget for a message begun must send, or finish its message, every
/// `stall_timeout` while others wait for the budget: 128 KiB/s at the default 500 ms. A peer
/// trickling a byte now and then would otherwise keep its whole frame's charge (up to the frame
/// limit, charged at its header) until its message timeout, and a few such peers the budget.
const STALL_PROGRESS: usize = 64 * 1024;
/// How long the guard waits to write its last words (an ERROR) to a peer it closes.
const PARTING_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// What peers hand the link writer.
enum Outgoing {
    /// A peer's message, with its share of the peer's link allowance until written, and the
    /// link generation its peer was announced on.
    Message(Bytes, Message, Queued, u32),
    Control(Control),
    Pong(PingContext),
}

/// A peer's entry in the table.
struct Entry {
    replies: mpsc::UnboundedSender<(Vec<Bytes>, Charge)>,
    budget: Budget,
    /// Replies queued for the peer or taken to be written, and not written yet.
    queued: Arc<AtomicU64>,
    /// Cancelled when the peer is to be closed for not reading its replies.
    close: CancellationToken,
    /// Cancelled when the server asks for the peer to be closed, or its link failed.
    ended: CancellationToken,
}

/// The link to the server, as the peers' tasks see it.
pub(super) struct Link {
    /// What every routing identity of this guard's links begins with; a connection number
    /// follows ([`link_identity`]).
    pub(super) prefix: Bytes,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    peers: Mutex<HashMap<Bytes, Entry>>,
    /// How many times the link has failed: a peer's messages go only on the link its peer was
    /// announced on (changed under the `peers` lock).
    generation: std::sync::atomic::AtomicU32,
}

/// The pause before a failed link is made again: from the first to the last, doubling.
const RELINK_FIRST: std::time::Duration = std::time::Duration::from_millis(10);
const RELINK_MOST: std::time::Duration = std::time::Duration::from_secs(1);

impl Link {
    /// Connects to the server's private socket in the background and starts both link tasks.
    /// A link that fails closes the peers it carried (their requests and replies were on it;
    /// they connect again, as after a server restart) and is made again, under a new routing
    /// identity, after a pause; peers are served again as soon as it is up. `cancel` ends it.
    pub(super) fn start(shared: Arc<Shared>, cancel: CancellationToken) -> Arc<Link> {
        let (outgoing, mut queue) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            prefix: link_prefix(),
            outgoing,
            peers: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU32::new(0),
        });
        let task = link.clone();
        tokio::spawn(async move {
            let mut pause = RELINK_FIRST;
            for connection in 0u32.. {
                let identity = link_identity(&task.prefix, connection);
                let started = tokio::time::Instant::now();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    end = run_link(&task, &shared, &identity, &mut queue) => {
                        // A server closing its socket ends the link before it drops the guard:
                        // give that a moment to arrive before calling it a failure.
                        let stopping = tokio::time::timeout(RELINK_FIRST, cancel.cancelled());
                        if stopping.await.is_ok() {
                            break;
                        }
                        warn!(?end, connection, "link to the server failed; its peers are closed and it is made again");
                    }
                }
                // The old link's peers end, and whatever was queued for it goes with it. A peer
                // of the old link still running elsewhere may queue more: the next link's writer
                // drops it by its generation.
                {
                    let peers = lock(&task.peers);
                    task.generation.fetch_add(1, Ordering::Relaxed);
                    for entry in peers.values() {
                        entry.ended.cancel();
                    }
                }
                while queue.try_recv().is_ok() {}
                if started.elapsed() > RELINK_MOST {
                    pause = RELINK_FIRST;
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = cancel.cancelled() => break,
                }
                pause = (pause * 2).min(RELINK_MOST);
            }
            for entry in lock(&task.peers).values() {
                entry.ended.cancel();
            }
        });
        link
    }

    fn send(&self, item: Outgoing) {
        // The writer outlives every peer task (the guard's cancel ends them together).
        let _ = self.outgoing.send(item);
    }
}

/// The start of a guard's link identities: one no peer can announce (a zero first octet is
/// refused from peers and reserved by RFC 37 for implementations), unguessable for those that
/// bypass the guard.
fn link_prefix() -> Bytes {
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

/// The routing identity of link number `connection`: a fresh one for each, so that the server
/// never takes a new link for one it has not yet seen close.
pub(super) fn link_identity(prefix: &[u8], connection: u32) -> Bytes {
    let mut id = prefix.to_vec();
    id.extend_from_slice(&connection.to_be_bytes());
    Bytes::from(id)
}

async fn run_link(
    link: &Link,
    shared: &Shared,
    identity: &Bytes,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> std::io::Result<()> {
    let stream = UnixStream::connect(&shared.socket_path).await?;
    let (read, mut write) = stream.into_split();
    let mut out = BytesMut::new();
    encode_greeting(&mut out);
    encode_ready(&mut out, b"DEALER", Some(identity));
    write.write_all(&out).await?;
    let generation = link.generation.load(Ordering::Relaxed);
    tokio::select! {
        end = write_link(write, queue, generation) => end,
        end = read_link(read, link, shared) => end,
    }
}

async fn write_link(
    mut write: unix::OwnedWriteHalf,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
    generation: u32,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(BATCH);
    let mut held = Vec::new();
    while let Some(first) = queue.recv().await {
        // Alone in the queue: the peers whose reads are ready run first and add theirs, so that
        // one write (and the server's one read) carries them all: about a tenth more requests
        // per second through the front end at the bench's default load (docs/PERFORMANCE.md).
        if queue.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                // From a peer of a link that failed: the server never heard of it here.
                Outgoing::Message(.., announced) if announced != generation => {}
                Outgoing::Message(peer, message, queued, _) => {
                    encode_routed(&mut out, &peer, &message.frames);
                    // Its inbound budget and its peer's allowance go back once it is written.
                    held.push((message.charge, queued));
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
        // A large message grew the buffer: let it go rather than keep its size for good.
        if out.capacity() > 2 * BATCH {
            out = BytesMut::with_capacity(BATCH);
        }
    }
    Ok(())
}

async fn read_link(
    mut read: unix::OwnedReadHalf,
    link: &Link,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut decoder = LinkDecoder::new(shared.config.link_limits());
    let mut buf = BytesMut::with_capacity(LINK_READ);
    loop {
        let event = match decoder.decode(&mut buf) {
            Ok(Some(event)) => event,
            Ok(None) => {
                // A large reply grew the buffer: once it is consumed, let it go.
                if buf.is_empty() && buf.capacity() > LINK_READ * 4 {
                    buf = BytesMut::with_capacity(LINK_READ);
                }
                if read.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
            Err(error) => return Err(std::io::Error::other(error)),
        };
        match event {
            LinkEvent::Routed { peer, frames } => {
                let frames = detach(frames, &mut buf);
                route(link, shared, peer, frames);
            }
            LinkEvent::Control(Control::Disconnected(peer)) => {
                if let Some(entry) = lock(&link.peers).get(&peer) {
                    entry.ended.cancel();
                }
            }
            LinkEvent::Ping(context) => link.send(Outgoing::Pong(context)),
            _ => {}
        }
    }
}

/// A reply's frames, made to hold no memory but their own: they are read as slices of the
/// link's read buffer, and one small reply queued for a peer that does not read would otherwise
/// keep the whole buffer (64 KiB, or a large reply's) for the price of its own bytes. A small
/// reply is copied into one allocation; after a large one, what `buf` holds beyond it moves to a
/// fresh buffer, so that no later reply shares the large one's.
fn detach(frames: Vec<Bytes>, buf: &mut BytesMut) -> Vec<Bytes> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    if total > LINK_READ {
        let mut fresh = BytesMut::with_capacity(LINK_READ.max(buf.len()));
        fresh.extend_from_slice(buf);
        *buf = fresh;
        return frames;
    }
    let mut one = BytesMut::with_capacity(total);
    for frame in &frames {
        one.extend_from_slice(frame);
    }
    let mut one = one.freeze();
    frames
        .iter()
        .map(|frame| one.split_to(frame.len()))
        .collect()
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
            let dropped = entry.queued.swap(0, Ordering::Relaxed) + 1;
            shared
                .counters
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
            entry.close.cancel();
        }
    }
}

/// Serves one accepted peer until it leaves, breaks a rule, or the guard stops.
pub(super) async fn serve_peer<S: PeerStream>(
    stream: S,
    addr: PeerAddr,
    connection: u32,
    permit: Permit,
    link: Arc<Link>,
    cancel: CancellationToken,
) {
    let shared = permit.shared.clone();
    let identity = Bytes::from(addr.identity(connection));
    let (close, ended) = (CancellationToken::new(), CancellationToken::new());
    let end = tokio::select! {
        // The ends first: a peer ended is not read again, even once.
        biased;
        _ = close.cancelled() => End::Broken(Rule::Outbound, "replies not read".into()),
        // The server asked, or the link the peer was on failed: no rule broken.
        _ = ended.cancelled() => End::ServerClosed,
        _ = cancel.cancelled() => End::Shutdown,
        end = peer(stream, &shared, &link, &identity, &close, &ended) => end,
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

async fn peer<S: PeerStream>(
    stream: S,
    shared: &Shared,
    link: &Link,
    identity: &Bytes,
    close: &CancellationToken,
    ended: &CancellationToken,
) -> End {
    let (mut read, mut write) = stream.halves();
    let config = &shared.config;
    let handshake_deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let mut codec = PeerCodec::new(
        shared.limits,
        shared.inbound.clone(),
        config.message_timeout,
        config.curve.clone(),
    )
    .announce_identity(config.identity.clone());
    let (replies, mut queue) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicU64::new(0));
    let mut entry = Some(Entry {
        replies,
        budget: Budget::new(config.outbound_budget),
        queued: queued.clone(),
        close: close.clone(),
        ended: ended.clone(),
    });
    // What is to be written to the peer, in whole commands and messages: what the codec answers
    // (greeting, handshake, PONGs, an ERROR) and the replies taken from the queue. It is written
    // in the same select as everything else, so that a peer that does not read never holds this
    // task in a write: its deadlines and the budget's stall rule still apply.
    let mut pending = BytesMut::new();
    codec.greeting_start(&mut pending);
    // The outbound charges of the replies in `pending`, given back once it is all written, and
    // when that must be done by.
    let mut held: Vec<Charge> = Vec::new();
    let mut replies_due: Option<tokio::time::Instant> = None;
    // Bytes the codec added to `pending` since it was last empty: past OWN_OUTPUT, the peer is
    // read no more until they are written (a peer sending PINGs it does not read the PONGs of).
    let mut own = 0usize;
    let mut buf = BytesMut::with_capacity(512);
    // The most the buffer has held room for since it was last made.
    let mut grown = 0;
    let allowance = Allowance::new(LINK_ALLOWANCE);
    // When the peer last made progress with the message it holds budget for, and how far it had
    // got then (PeerCodec::progress): see STALL_PROGRESS. Set when it starts holding, before
    // it is read.
    let mut last_progress = tokio::time::Instant::now();
    let mut progress_mark = 0u64;
    // The link generation this peer was announced on, once it is.
    let mut generation = 0;
    let (mut was_holding, mut progress_for) = (false, None);
    loop {
        // Enabled before the budget and the allowance are tried, so that no release in between
        // is missed.
        let released = shared.inbound.released();
        tokio::pin!(released);
        released.as_mut().enable();
        let written = allowance.written();
        tokio::pin!(written);
        written.as_mut().enable();
        let mut blocked = false;
        let mut link_full = false;
        // The codec's answers, unwritten, stopped the reading of what `buf` holds.
        let mut stopped_for_output = false;
        // One read of the clock per wake-up.
        let now = StdInstant::now();
        loop {
            // This peer has its share of the link queued: the others' messages go first.
            if allowance.is_over() {
                link_full = true;
                break;
            }
            if own > OWN_OUTPUT {
                stopped_for_output = true;
                break;
            }
            let before = pending.len();
            let step = codec.next(now, &mut buf, &mut pending);
            own += pending.len() - before;
            let step = match step {
                Ok(step) => step,
                Err(violation) => {
                    // What the codec holds of the inbound budget goes back at once; then what it
                    // wrote goes out: an ERROR before the connection closes.
                    drop(codec);
                    let parting = write.write_all(&pending);
                    let _ = tokio::time::timeout(PARTING_WRITE, parting).await;
                    return violation.into();
                }
            };
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
                    let key = codec.client_key();
                    debug!(socket_type = ?ready.socket_type, announced = ?ready.identity, key = ?key, "peer ready");
                    if let Some(entry) = entry.take() {
                        let mut peers = lock(&link.peers);
                        peers.insert(identity.clone(), entry);
                        generation = link.generation.load(Ordering::Relaxed);
                        drop(peers);
                        let connected = match key {
                            Some(key) => Control::Authenticated {
                                peer: identity.clone(),
                                key: Bytes::copy_from_slice(key.as_bytes()),
                            },
                            None => Control::Connected(identity.clone()),
                        };
                        link.send(Outgoing::Control(connected));
                    }
                }
                Step::Ping { consumed, .. } => {
                    let _ = buf.split_to(consumed);
                    shared.counters.pongs.fetch_add(1, Ordering::Relaxed);
                }
                Step::Message { consumed, message } => {
                    let _ = buf.split_to(consumed);
                    let queued = allowance.queue(link_cost(identity, &message.frames));
                    link.send(Outgoing::Message(
                        identity.clone(),
                        message,
                        queued,
                        generation,
                    ));
                }
            }
        }
        if !pending.is_empty() {
            if let Err(error) = write_now(&mut write, &mut pending) {
                return End::Io(error);
            }
            if pending.is_empty() {
                drained(&mut pending, &mut held, &queued, &mut own, &mut replies_due);
                if stopped_for_output {
                    // All written at once: read on what is already buffered.
                    continue;
                }
            }
        }
        let write_full = own > OWN_OUTPUT;
        // The deadline of the message begun, if any.
        let message = codec.deadline();
        let deadline = if entry.is_some() {
            Some(handshake_deadline)
        } else {
            message.map(tokio::time::Instant::from_std)
        };
        // A whole CURVE command grew the buffer past `buffer_size`: once it is read, its memory
        // goes (kept, a connection that sent one large message would hold it while idle).
        if buf.is_empty() && grown > config.buffer_size {
            buf = BytesMut::with_capacity(512);
            grown = 0;
        }
        // The read buffer starts small and doubles while reads fill it, up to `buffer_size` (or
        // a whole CURVE command, charged to the inbound budget): an idle or stalled peer holds
        // well under a kilobyte.
        let room = codec
            .wanted(&buf, config.buffer_size)
            .saturating_sub(buf.len());
        if buf.capacity() == buf.len() && room > 0 {
            buf.reserve(buf.capacity().max(512).min(room));
            grown = grown.max(buf.capacity());
        }
        // Counted as waiting for the inbound budget while blocked on it: peers that hold some
        // and have stopped sending are then closed after `stall_timeout`.
        let _waiting = blocked.then(|| shared.inbound.wait_for_room());
        // This peer holds budget for a message begun, and is not held back by the guard (a peer
        // that does not read what the codec answers holds itself back).
        let holding = entry.is_none() && message.is_some() && !blocked && !link_full;
        // Only a holder listens for waiters: enabled before they are counted, so that none who
        // starts waiting in between is missed.
        let pressure = shared.inbound.pressure();
        tokio::pin!(pressure);
        if holding {
            pressure.as_mut().enable();
        }
        // A message begun or finished, or a peer held back until now: its progress counts from
        // here.
        if holding {
            let progress = codec.progress(&buf);
            if !was_holding
                || message != progress_for
                || progress >= progress_mark + STALL_PROGRESS as u64
            {
                last_progress = tokio::time::Instant::from_std(now);
                progress_mark = progress;
            }
        }
        (was_holding, progress_for) = (holding, message);
        let squeezed = holding && shared.inbound.waiting() > 0;
        tokio::select! {
            // read_buf is cancel-safe: nothing is consumed unless it completes.
            read = read.read_buf(&mut buf), if !blocked && !link_full && !write_full && room > 0 => match read {
                Ok(0) => return End::PeerClosed,
                Ok(_) => {}
                Err(error) => return End::Io(error),
            },
            // write_buf is cancel-safe: nothing is written unless it completes.
            wrote = write.write_buf(&mut pending), if !pending.is_empty() => match wrote {
                Ok(0) => return End::Io(std::io::ErrorKind::WriteZero.into()),
                Ok(_) => {
                    if pending.is_empty() {
                        drained(&mut pending, &mut held, &queued, &mut own, &mut replies_due);
                    }
                }
                Err(error) => return End::Io(error),
            },
            // Others wait for the budget this peer holds: it must keep sending, STALL_PROGRESS
            // or the rest of its message every `stall_timeout`.
            _ = tokio::time::sleep_until(last_progress + config.stall_timeout), if squeezed => {
                if shared.inbound.waiting() > 0 {
                    return End::Broken(
                        Rule::MessageTimeout,
                        "stopped mid-message while others waited for the inbound budget".into(),
                    );
                }
            }
            // Someone began waiting for the budget: look again.
            _ = &mut pressure, if holding && !squeezed => {}
            // Some inbound budget came back: try again.
            _ = &mut released, if blocked => {}
            // Some of this peer's messages were written to the link: go on.
            _ = &mut written, if link_full => {}
            // recv is cancel-safe: a reply stays queued unless taken. One batch of replies is
            // written at a time.
            Some(reply) = queue.recv(), if replies_due.is_none() => {
                take_replies(&mut pending, &mut held, &mut codec, reply, &mut queue);
                replies_due = Some(tokio::time::Instant::now() + config.message_timeout);
            }
            // A peer that does not read cannot hold its replies forever: past the message
            // timeout they are dropped and it is closed, as at its outbound budget.
            _ = tokio::time::sleep_until(replies_due.unwrap_or(handshake_deadline)), if replies_due.is_some() => {
                // Those queued and those taken but not written: counted once, by whoever comes
                // first (the link reader, finding the peer over its budget, counts them too).
                let dropped = queued.swap(0, Ordering::Relaxed);
                shared.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                return End::Broken(Rule::Outbound, "replies not read in time".into());
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(handshake_deadline)), if deadline.is_some() => {
                if entry.is_some() {
                    return End::Broken(Rule::HandshakeTimeout, "no greeting and READY in time".into());
                }
                if let Err(violation) = codec.check(StdInstant::now()) {
                    return violation.into();
                }
            }
        }
    }
}

/// The bytes a peer's message takes on the link: its frames and the peer's identity in front.
fn link_cost(identity: &Bytes, frames: &[Bytes]) -> usize {
    crate::mux::link::encoded_len(std::slice::from_ref(identity))
        + crate::mux::link::encoded_len(frames)
}

/// Encodes `first` and whatever else is queued, up to a batch, onto `pending`; their outbound
/// charges go to `held`.
fn take_replies(
    pending: &mut BytesMut,
    held: &mut Vec<Charge>,
    codec: &mut PeerCodec,
    first: (Vec<Bytes>, Charge),
    queue: &mut mpsc::UnboundedReceiver<(Vec<Bytes>, Charge)>,
) {
    let mut next = Some(first);
    while let Some((frames, charge)) = next.take() {
        codec.encode_message(pending, &frames);
        held.push(charge);
        if pending.len() < BATCH {
            next = queue.try_recv().ok();
        }
    }
}

/// Everything for the peer is written: the replies' charges go back, and the buffer's memory
/// goes too (kept, a connection sent one large reply would hold it while idle).
fn drained(
    pending: &mut BytesMut,
    held: &mut Vec<Charge>,
    queued: &AtomicU64,
    own: &mut usize,
    replies_due: &mut Option<tokio::time::Instant>,
) {
    *pending = BytesMut::new();
    // Counted out once written (saturating: a peer closed at its budget has had its count
    // taken, to 0, as its replies were dropped).
    let written = held.len() as u64;
    let _ = queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_sub(written))
    });
    held.clear();
    *own = 0;
    *replies_due = None;
}

/// Writes as much of `pending` as the socket takes at once, without waiting for it.
fn write_now<W: AsyncWrite + Unpin>(write: &mut W, pending: &mut BytesMut) -> std::io::Result<()> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(write).poll_write(&mut cx, pending) {
        std::task::Poll::Ready(Ok(0)) => Err(std::io::ErrorKind::WriteZero.into()),
        std::task::Poll::Ready(Ok(n)) => {
            let _ = pending.split_to(n);
            Ok(())
        }
        std::task::Poll::Ready(Err(error)) => Err(error),
        std::task::Poll::Pending => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Buf;

    use super::*;
    use crate::inspect::{frame_header, FLAG_COMMAND, FLAG_MORE, GREETING};
    use crate::mux::link::encode_message;
    use crate::mux::tests::ping;
    use crate::{Guard, GuardConfig};
    use tokio::net::TcpStream;

    /// The server's end of a link, reading what the front end writes.
    struct Server {
        stream: UnixStream,
        buf: BytesMut,
    }

    impl Server {
        /// Takes the front end's link on `listener` and completes the handshake as a ROUTER.
        async fn accept(listener: std::os::unix::net::UnixListener) -> Server {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            Server::accept_on(&listener).await
        }

        /// As [`Server::accept`], on a listener kept for another link.
        async fn accept_on(listener: &tokio::net::UnixListener) -> Server {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut hello = BytesMut::new();
            encode_greeting(&mut hello);
            encode_ready(&mut hello, b"ROUTER", None);
            stream.write_all(&hello).await.unwrap();
            let mut server = Server {
                stream,
                buf: BytesMut::new(),
            };
            server.fill(GREETING).await;
            server.buf.advance(GREETING);
            server
        }

        async fn fill(&mut self, len: usize) {
            while self.buf.len() < len {
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the link closed");
            }
        }

        /// The next message on the link, commands skipped.
        async fn message(&mut self) -> Vec<Bytes> {
            let mut frames = Vec::new();
            loop {
                self.fill(2).await;
                let header = match frame_header(&self.buf) {
                    Some((header, _)) => header,
                    None => {
                        self.fill(9).await;
                        9
                    }
                };
                let (_, size) = frame_header(&self.buf).unwrap();
                let flags = self.buf[0];
                self.fill(header + size as usize).await;
                self.buf.advance(header);
                let body = self.buf.split_to(size as usize).freeze();
                if flags & FLAG_COMMAND != 0 {
                    continue;
                }
                frames.push(body);
                if flags & FLAG_MORE == 0 {
                    return frames;
                }
            }
        }
    }

    /// A peer's greeting and READY as a DEALER.
    fn hello() -> BytesMut {
        let mut out = BytesMut::new();
        encode_greeting(&mut out);
        encode_ready(&mut out, b"DEALER", None);
        out
    }

    /// A peer's greeting and READY as a DEALER, then a message of `body`.
    fn hello_saying(body: Bytes) -> BytesMut {
        let mut out = hello();
        encode_message(&mut out, &[body]);
        out
    }

    /// A TCP connection to `guard`.
    async fn connect_to(guard: &Guard) -> TcpStream {
        TcpStream::connect(guard.local_addr().unwrap())
            .await
            .unwrap()
    }

    /// Connects a peer to `guard` that says `body` once its handshake is done.
    async fn peer_saying(guard: &Guard, body: &'static [u8]) -> TcpStream {
        let mut peer = connect_to(guard).await;
        peer.write_all(&hello_saying(Bytes::from_static(body)))
            .await
            .unwrap();
        peer
    }

    /// Reads the server's messages until one ends with `body`.
    async fn until_said(server: &mut Server, body: &[u8]) {
        let wait = async { while server.message().await.last().map(|f| &f[..]) != Some(body) {} };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the message arrives");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_link_closes_its_peers_and_is_made_again_under_a_new_identity() {
        let config = GuardConfig::default().front_end(true);
        let (guard, listener) = Guard::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        let mut server = Server::accept_on(&listener).await;
        let mut before = peer_saying(&guard, b"before").await;
        until_said(&mut server, b"before").await;
        // The server's end of the link goes away: the peer it carried is closed.
        drop(server);
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), before.read_to_end(&mut sink));
        assert!(closed.await.is_ok(), "the link's peer is closed");
        // The guard links again and serves new peers.
        let mut server =
            tokio::time::timeout(Duration::from_secs(10), Server::accept_on(&listener))
                .await
                .expect("the link is made again");
        let _after = peer_saying(&guard, b"after").await;
        until_said(&mut server, b"after").await;
        let first = guard.link_identity().unwrap();
        assert!(guard.is_link(&first));
        assert!(guard.is_link(&link_identity(&first[..first.len() - 4], 1)));
        assert!(!guard.is_link(b"\0Lsomething else"));
    }

    /// Whether `frame` lies in the memory `within` was read into.
    fn inside(frame: &Bytes, within: std::ops::Range<usize>) -> bool {
        within.contains(&(frame.as_ptr() as usize))
    }

    #[test]
    fn a_reply_read_from_the_link_holds_none_of_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(LINK_READ);
        buf.extend_from_slice(&[1u8; 3 * LINK_READ / 4]);
        let start = buf.as_ptr() as usize;
        let allocation = start..start + buf.capacity();
        let small = buf.split_to(100).freeze();
        let frames = vec![small.slice(..10), small.slice(10..)];
        let detached = detach(frames, &mut buf);
        assert_eq!(detached[0], small.slice(..10));
        assert_eq!(detached[1], small.slice(10..));
        assert!(detached
            .iter()
            .all(|frame| !inside(frame, allocation.clone())));

        // A large reply keeps its slices; what follows it moves out of its buffer.
        let mut buf = BytesMut::with_capacity(4 * LINK_READ);
        buf.extend_from_slice(&[2u8; 2 * LINK_READ]);
        buf.extend_from_slice(b"next reply");
        let start = buf.as_ptr() as usize;
        let allocation = start..start + buf.capacity();
        let large = buf.split_to(2 * LINK_READ).freeze();
        let detached = detach(vec![large.clone()], &mut buf);
        assert!(inside(&detached[0], allocation.clone()), "not copied");
        assert_eq!(&buf[..], b"next reply");
        assert!(!allocation.contains(&(buf.as_ptr() as usize)));
    }

    /// A guard with a 2 MiB inbound budget and a peer, with a small receive window, that `hold`
    /// makes hold 1.25 MiB of it: another peer's 1 MiB message must still arrive, the holder
    /// closed by the stall rule (the message timeout is far off).
    async fn the_stall_rule_closes<F>(hold: impl FnOnce(TcpStream) -> F)
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        const MIB: usize = 1024 * 1024;
        let config = GuardConfig::default()
            .front_end(true)
            .max_frame_size(3 * MIB as u64 / 2)
            .max_message_size(3 * MIB as u64 / 2)
            .inbound_budget(2 * MIB)
            .message_timeout(Duration::from_secs(600));
        let (guard, listener) = Guard::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let mut server = Server::accept(listener).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let holder = socket.connect(guard.local_addr().unwrap()).await.unwrap();
        let holding = tokio::spawn(hold(holder));
        let held = async {
            while guard.stats().inbound_held < 5 * MIB as u64 / 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("the holder's frame is charged");

        // Another peer's message needs more than is left: it waits, and the holder must go.
        let mut other = connect_to(&guard).await;
        let out = hello_saying(Bytes::from(vec![2u8; MIB]));
        let sending = tokio::spawn(async move {
            other.write_all(&out).await.unwrap();
            other
        });
        let wait = async { while server.message().await.last().map(Bytes::len) != Some(MIB) {} };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the other peer's message arrives");
        assert_eq!(guard.stats().count(Rule::MessageTimeout), 1);
        let _other = sending.await.unwrap();
        holding.abort();
    }

    /// The first frame of a 1.25 MiB message, its first `sent` bytes, after the handshake.
    fn begun(more: bool, sent: usize) -> BytesMut {
        let mut out = hello();
        let flags = if more { FLAG_MORE } else { 0 };
        crate::mux::link::encode_header(&mut out, flags, 5 * 1024 * 1024 / 4);
        out.extend_from_slice(&vec![1u8; sent]);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_sending_pings_it_does_not_read_is_closed_when_others_wait() {
        the_stall_rule_closes(|mut holder| async move {
            // A whole first frame, more to come, then PINGs whose PONGs it never reads.
            holder.write_all(&begun(true, 5 * 1024 * 1024 / 4)).await?;
            // Waits once the guard stops reading; ends when the holder is closed.
            holder.write_all(&ping(&[7; 16]).repeat(400_000)).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_trickling_its_frame_is_closed_when_others_wait() {
        the_stall_rule_closes(|mut holder| async move {
            holder.write_all(&begun(false, 100_000)).await?;
            // A byte every 50 ms: never quiet for the stall timeout, never near its message.
            for _ in 0..12_000 {
                holder.write_all(&[1]).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_sending_pongs_nobody_asked_for_is_closed_when_others_wait() {
        the_stall_rule_closes(|mut holder| async move {
            holder.write_all(&begun(true, 5 * 1024 * 1024 / 4)).await?;
            // 400 KB/s of commands the guard drops: bytes, but none of its message.
            let mut pong = BytesMut::new();
            encode_pong(&mut pong, &PingContext::new(&[7u8; 16]));
            let pongs = pong.repeat(160);
            for _ in 0..6_000 {
                holder.write_all(&pongs).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_buffered_behind_many_pings_is_read_once_their_pongs_are_written() {
        let config = GuardConfig::default()
            .front_end(true)
            .buffer_size(256 * 1024);
        // On a Unix socket, whose buffer takes the guard's PONGs in one write.
        let path = std::env::temp_dir().join(format!("guard-pings-{}.sock", std::process::id()));
        let (_guard, listener) = Guard::bind_unix(&path, config).await.unwrap();
        let mut server = Server::accept(listener).await;
        let peer = UnixStream::connect(&path).await.unwrap();
        let _ = std::fs::remove_file(&path);
        let (mut read, mut write) = peer.into_split();
        // Everything it is sent is read: its PONGs are written as fast as they come.
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        let reading = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = read.read(&mut sink).await {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let ping = ping(&[7; 16]);
        // First PINGs enough for the guard's read buffer to grow, all answered.
        const FIRST: usize = 6_000;
        let mut out = hello();
        out.extend_from_slice(&ping.repeat(FIRST));
        write.write_all(&out).await.unwrap();
        let answered = async {
            // The greeting, the READY and a 23-byte PONG for each.
            while received.load(Ordering::Relaxed) < (GREETING + 28 + 23 * FIRST) as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("the first PINGs answered");
        // Then in one write PINGs whose PONGs pass what the guard queues of its own answers,
        // and a message, and nothing after: the message waits in the guard's buffer while the
        // PONGs are written.
        let mut out = BytesMut::from(&ping.repeat(8_000)[..]);
        encode_message(&mut out, &[Bytes::from_static(b"after the pings")]);
        write.write_all(&out).await.unwrap();
        until_said(&mut server, b"after the pings").await;
        reading.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flooding_peer_queues_little_ahead_of_another_peers_message() {
        const FLOOD_MESSAGE: usize = 64 * 1024;
        const FLOOD: usize = 512;
        let config = GuardConfig::default()
            .front_end(true)
            .inbound_budget(2 * FLOOD * FLOOD_MESSAGE);
        let (guard, listener) = Guard::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let mut server = Server::accept(listener).await;

        // One peer sends 32 MiB as fast as the guard takes it.
        let mut flooder = connect_to(&guard).await;
        let mut flood = hello_saying(Bytes::from(vec![7u8; FLOOD_MESSAGE]));
        let flooding = tokio::spawn(async move {
            flooder.write_all(&flood).await?;
            let message = flood.split_off(flood.len() - FLOOD_MESSAGE - 9);
            for _ in 1..FLOOD {
                flooder.write_all(&message).await?;
            }
            std::io::Result::Ok(flooder)
        });
        let mut other = connect_to(&guard).await;
        other.write_all(&hello()).await.unwrap();

        // The server reads slowly (a message a millisecond, far slower than the flood comes: a
        // load shape, not a wait); once 4 MiB of the flood has passed the other peer sends one
        // message.
        let (mut flood_read, mut ahead) = (0, None::<usize>);
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), server.message())
                .await
                .expect("the link moves");
            match &message[1..] {
                [body] if body.len() == FLOOD_MESSAGE => {
                    flood_read += 1;
                    if let Some(ahead) = ahead.as_mut() {
                        *ahead += FLOOD_MESSAGE;
                    }
                }
                [body] if &body[..] == b"mine" => break,
                _ => continue, // control messages
            }
            if flood_read == 64 {
                let mut mine = BytesMut::new();
                encode_message(&mut mine, &[Bytes::from_static(b"mine")]);
                other.write_all(&mine).await.unwrap();
                ahead = Some(0);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Behind the other peer's message: at most the flooder's allowance and one message,
        // the link writer's batch, and what the socket buffers hold; never the flood.
        let ahead = ahead.expect("sent");
        let bound = LINK_ALLOWANCE + FLOOD_MESSAGE + BATCH + 1024 * 1024;
        assert!(
            ahead <= bound,
            "{ahead} bytes of the flood went ahead (at most {bound})"
        );
        flooding.abort();
    }

    mod curve {
        use std::collections::HashSet;

        use crypto_box::aead::OsRng;

        use super::*;
        use crate::curve::{CurveClient, CurveKeyPair, Session, MESSAGE_COMMAND, MESSAGE_MORE};
        use crate::mux::secure::{ClientFilter, CurveSecurity};

        const DEALER: &[u8] = b"\x0bSocket-Type\x00\x00\x00\x06DEALER";

        struct Peer {
            stream: TcpStream,
            buf: BytesMut,
        }

        impl Peer {
            /// The body of the next command, or `None` when the connection closes.
            async fn command(&mut self) -> Option<Vec<u8>> {
                loop {
                    if let Some((header, size)) = frame_header(&self.buf) {
                        if self.buf.len() >= header + size as usize {
                            assert_eq!(self.buf[0] & FLAG_MORE, 0, "MORE is inside the box");
                            self.buf.advance(header);
                            return Some(self.buf.split_to(size as usize).to_vec());
                        }
                    }
                    let read = tokio::time::timeout(
                        Duration::from_secs(10),
                        self.stream.read_buf(&mut self.buf),
                    );
                    match read.await.expect("the guard answers") {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            }

            async fn greeting(&mut self) -> Vec<u8> {
                while self.buf.len() < GREETING {
                    assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0);
                }
                self.buf.split_to(GREETING).to_vec()
            }
        }

        /// Connects as a CURVE client holding `keys`: the session, or the refusal.
        async fn connect(
            guard: &Guard,
            server: &CurveKeyPair,
            keys: CurveKeyPair,
        ) -> (Peer, Result<Session, crate::curve::CurveError>) {
            let stream = TcpStream::connect(guard.local_addr().unwrap())
                .await
                .unwrap();
            let mut peer = Peer {
                stream,
                buf: BytesMut::new(),
            };
            let mut client = CurveClient::new(&mut OsRng, server.public(), Arc::new(keys));
            let mut out = BytesMut::new();
            crate::curve::encode_greeting(&mut out, false);
            client.hello(&mut out);
            peer.stream.write_all(&out).await.unwrap();
            let greeting = peer.greeting().await;
            assert_eq!(&greeting[12..17], b"CURVE");
            assert_eq!(greeting[32], 1, "the guard is the CURVE server");
            let welcome = peer.command().await.expect("WELCOME");
            out.clear();
            if let Err(error) = client.welcome(&mut OsRng, &welcome, DEALER, &mut out) {
                return (peer, Err(error));
            }
            peer.stream.write_all(&out).await.unwrap();
            let ready = peer.command().await.expect("READY or ERROR");
            let session = client.ready(&ready).map(|(metadata, session)| {
                assert_eq!(&metadata[..], b"\x0bSocket-Type\x00\x00\x00\x06ROUTER");
                session
            });
            (peer, session)
        }

        async fn curve_guard(
            allowed: Option<HashSet<crate::curve::CurvePublicKey>>,
        ) -> (Guard, Server, Arc<CurveKeyPair>) {
            curve_guard_with(allowed, GuardConfig::default()).await
        }

        async fn curve_guard_with(
            allowed: Option<HashSet<crate::curve::CurvePublicKey>>,
            config: GuardConfig,
        ) -> (Guard, Server, Arc<CurveKeyPair>) {
            let keys = Arc::new(CurveKeyPair::generate());
            let config = config.curve(CurveSecurity {
                keys: keys.clone(),
                clients: ClientFilter::new(allowed),
                allow_null: false,
            });
            let (guard, listener) = Guard::bind("127.0.0.1:0".parse().unwrap(), config)
                .await
                .unwrap();
            let server = Server::accept(listener).await;
            (guard, server, keys)
        }

        #[tokio::test]
        async fn a_curve_client_is_served_through_the_front_end_both_ways() {
            let (guard, mut server, keys) = curve_guard(None).await;
            let client = CurveKeyPair::generate();
            let public = client.public();
            let (mut peer, session) = connect(&guard, &keys, client).await;
            let mut session = session.expect("admitted");
            // CONNECTED carries the key the handshake proved.
            let connected = server.message().await;
            assert_eq!(connected.len(), 4, "a control message: {connected:?}");
            assert_eq!(&connected[..2], [Bytes::new(), Bytes::from_static(&[1])]);
            assert_eq!(&connected[3][..], public.as_bytes());
            let long = Bytes::from(vec![9u8; 70_000]);
            let mut out = BytesMut::new();
            session.seal(MESSAGE_MORE, b"", &mut out);
            session.seal(0, &long, &mut out);
            // A PING inside a box is answered inside a box.
            session.seal(MESSAGE_COMMAND, b"\x04PING\x00\x0aabc", &mut out);
            peer.stream.write_all(&out).await.unwrap();
            let message = server.message().await;
            assert_eq!(message[1..], [Bytes::new(), long.clone()]);
            let mut pong = peer.command().await.expect("PONG");
            let (flags, range) = session.open(&mut pong).unwrap();
            assert_eq!(
                (flags, &pong[range]),
                (MESSAGE_COMMAND, &b"\x04PONGabc"[..])
            );
            // A reply for the peer is sealed.
            let mut reply = BytesMut::new();
            encode_routed(
                &mut reply,
                &message[0],
                &[Bytes::new(), Bytes::from_static(b"world")],
            );
            server.stream.write_all(&reply).await.unwrap();
            let mut frames = Vec::new();
            for _ in 0..2 {
                let mut command = peer.command().await.expect("MESSAGE");
                let (flags, range) = session.open(&mut command).unwrap();
                frames.push((flags, command[range].to_vec()));
            }
            assert_eq!(frames, [(MESSAGE_MORE, vec![]), (0, b"world".to_vec())]);
            assert_eq!(guard.stats().count(Rule::Curve), 0);
        }

        #[tokio::test]
        async fn curve_peers_each_holding_a_sealed_frame_of_the_budget_are_all_served() {
            // The smallest inbound budget a CURVE front end takes: the largest message and one
            // sealed frame. Two peers each hold a sealed frame of about half of it.
            const SIZE: usize = 100_000;
            let config = GuardConfig::default()
                .max_frame_size(SIZE as u64)
                .max_message_size(SIZE as u64);
            let budget = config.smallest_curve_inbound_budget();
            let config = config.inbound_budget(budget);
            let (guard, mut server, keys) = curve_guard_with(None, config).await;
            let mut peers = Vec::new();
            for byte in [1u8, 2] {
                let (mut peer, session) = connect(&guard, &keys, CurveKeyPair::generate()).await;
                let mut out = BytesMut::new();
                session
                    .expect("admitted")
                    .seal(0, &vec![byte; SIZE - 1_000], &mut out);
                // All but the last byte: the frame is charged, sealed, and cannot be opened yet.
                let last = out.split_off(out.len() - 1);
                peer.stream.write_all(&out).await.unwrap();
                peers.push((peer, last));
            }
            let both = async {
                while guard.stats().inbound_held < 2 * (SIZE as u64 - 1_000) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), both)
                .await
                .expect("both sealed frames are charged");
            for (peer, last) in &mut peers {
                peer.stream.write_all(last).await.unwrap();
            }
            let mut bodies = Vec::new();
            let read = async {
                while bodies.len() < 2 {
                    let message = server.message().await;
                    if let Some(body) = message.last().filter(|body| body.len() == SIZE - 1_000) {
                        bodies.push(body[0]);
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("both messages reach the server");
            bodies.sort_unstable();
            assert_eq!(bodies, [1, 2]);
        }

        #[tokio::test]
        async fn the_largest_message_in_the_smallest_frames_passes_the_smallest_curve_budget() {
            const FRAME: usize = 100;
            const FRAMES: usize = 10;
            let config = GuardConfig::default()
                .max_frame_size(FRAME as u64)
                .max_message_size((FRAME * FRAMES) as u64)
                .max_frames(FRAMES as u32);
            // The smallest budget the configuration takes.
            let budget = config.smallest_curve_inbound_budget();
            let takes = |budget| {
                config
                    .clone()
                    .inbound_budget(budget)
                    .curve(CurveSecurity {
                        keys: Arc::new(CurveKeyPair::generate()),
                        clients: ClientFilter::new(None),
                        allow_null: false,
                    })
                    .validate_front_end()
                    .is_ok()
            };
            assert!(takes(budget) && !takes(budget - 1));
            let config = config.inbound_budget(budget);
            let (guard, mut server, keys) = curve_guard_with(None, config).await;
            let (mut peer, session) = connect(&guard, &keys, CurveKeyPair::generate()).await;
            let mut session = session.expect("admitted");
            let mut out = BytesMut::new();
            for i in 0..FRAMES {
                let flags = if i + 1 < FRAMES { MESSAGE_MORE } else { 0 };
                session.seal(flags, &[i as u8; FRAME], &mut out);
            }
            peer.stream.write_all(&out).await.unwrap();
            let message = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let message = server.message().await;
                    if message.len() == FRAMES + 1 {
                        return message;
                    }
                }
            });
            let message = message.await.expect("the message reaches the server");
            assert_eq!(&message[FRAMES][..], &[(FRAMES - 1) as u8; FRAME]);
        }

        #[tokio::test]
        async fn a_client_key_not_allowed_gets_error_and_is_counted() {
            let allowed = CurveKeyPair::generate();
            let (guard, _server, keys) = curve_guard(Some(HashSet::from([allowed.public()]))).await;
            let (mut peer, refused) = connect(&guard, &keys, CurveKeyPair::generate()).await;
            assert!(
                matches!(refused, Err(crate::curve::CurveError::Refused(_))),
                "{refused:?}"
            );
            assert_eq!(peer.command().await, None, "closed after the ERROR");
            assert_eq!(guard.stats().count(Rule::Unauthorized), 1);
            let (_peer, admitted) = connect(&guard, &keys, allowed).await;
            assert!(admitted.is_ok());
        }

        #[tokio::test]
        async fn a_null_peer_or_a_replayed_message_is_closed_and_counted() {
            let (guard, _server, keys) = curve_guard(None).await;
            let mut null = connect_to(&guard).await;
            null.write_all(&hello()).await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), null.read_to_end(&mut rest))
                .await
                .expect("closed");
            assert_eq!(guard.stats().count(Rule::Greeting), 1);

            let (mut peer, session) = connect(&guard, &keys, CurveKeyPair::generate()).await;
            let mut out = BytesMut::new();
            session.unwrap().seal(0, b"once", &mut out);
            peer.stream.write_all(&out).await.unwrap();
            peer.stream.write_all(&out).await.unwrap();
            assert_eq!(peer.command().await, None, "closed at the replay");
            assert_eq!(guard.stats().count(Rule::Curve), 1);
        }
    }
}
