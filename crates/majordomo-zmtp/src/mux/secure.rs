//! One peer's side of the front end, whatever its mechanism: sans-IO, `now` an input.
//!
//! A [`PeerCodec`] reads a peer's stream into [`Step`]s as an [`Assembler`] does, and writes
//! what goes back to it (the handshake's answers, PONGs, replies). On a NULL endpoint it is the
//! assembler itself. On a CURVE endpoint ([`CurveSecurity`]) it terminates CurveZMQ: it answers
//! the handshake ([`CurveServer`]), checks the client's key against the endpoint's
//! [`ClientFilter`], opens each MESSAGE command in place and hands the frame inside to the
//! assembler, so every limit, budget and deadline of a NULL peer holds for a CURVE peer too.
//!
//! A MESSAGE command is opened only when it is whole, so its bytes are charged to the inbound
//! budget before they are read, and it must be whole within the message timeout, as a message
//! must.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use crypto_box::aead::OsRng;

use super::assemble::{Assembler, Step, FRAME_OVERHEAD};
use super::budget::{Budget, Charge};
use super::link;
use crate::curve::{
    encode_error, CurveKeyPair, CurvePublicKey, CurveServer, Session, CURVE_MECHANISM,
    MESSAGE_COMMAND, MESSAGE_MORE, MESSAGE_OVERHEAD,
};
use crate::inspect::{
    frame_header, FrameLimits, PingContext, Violation, FLAG_COMMAND, FLAG_LONG, FLAG_MORE,
    GREETING, LONG_HEADER, MAX_COMMAND, MECHANISM, MECHANISM_LEN, NULL_MECHANISM, SHORT_HEADER,
};

/// What an opened frame is charged beyond its sealed bytes, at most: its own overhead and its
/// message's, as the assembler charges them.
pub(crate) const OPENED_OVERHEAD: usize = FRAME_OVERHEAD + super::assemble::MESSAGE_OVERHEAD;

/// The client keys a CURVE endpoint lets in: any key, or those of a list. Cheap to clone; every
/// clone sees [`ClientFilter::set`], so a reload applies to the next handshake without touching
/// the connections already in.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter(Arc<RwLock<Option<Arc<HashSet<CurvePublicKey>>>>>);

impl ClientFilter {
    /// A filter letting in the keys of `allowed`, or any key for `None`.
    pub fn new(allowed: Option<HashSet<CurvePublicKey>>) -> Self {
        let filter = Self::default();
        filter.set(allowed);
        filter
    }

    /// Replaces the list.
    pub fn set(&self, allowed: Option<HashSet<CurvePublicKey>>) {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        *slot = allowed.map(Arc::new);
    }

    /// Whether `key` may in.
    pub fn admits(&self, key: &CurvePublicKey) -> bool {
        let slot = self.0.read().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().is_none_or(|list| list.contains(key))
    }
}

/// CURVE on a guarded endpoint: the server's keys and whom it lets in.
#[derive(Clone)]
pub struct CurveSecurity {
    /// The server's permanent key pair (`--curve-secret-key-file`).
    pub keys: Arc<CurveKeyPair>,
    /// Client keys allowed in.
    pub clients: ClientFilter,
    /// Whether peers with the NULL mechanism are served too (unencrypted, with no key).
    pub allow_null: bool,
}

impl std::fmt::Debug for CurveSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveSecurity")
            .field("public", &self.keys.public())
            .field("allow_null", &self.allow_null)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CurveSecurity {
    fn eq(&self, other: &Self) -> bool {
        self.keys.public() == other.keys.public()
            && Arc::ptr_eq(&self.clients.0, &other.clients.0)
            && self.allow_null == other.allow_null
    }
}

impl Eq for CurveSecurity {}

/// The greeting's signature and major version, the same for every mechanism.
const GREETING_START: usize = 11;

/// Where a CURVE peer's connection stands.
enum Curve {
    /// Waiting for the peer's greeting (the server's is sent once the peer's mechanism is known).
    Greeting(Arc<CurveSecurity>),
    /// CURVE greeting exchanged; HELLO and INITIATE to come.
    Handshake(CurveServer, Arc<CurveSecurity>),
    /// READY sent: MESSAGE commands.
    Open(Session),
}

/// A peer's stream in and its replies out. See the module documentation.
pub struct PeerCodec {
    assembler: Assembler,
    /// `None`: NULL, the assembler reads the stream itself.
    curve: Option<Curve>,
    limits: FrameLimits,
    budget: Budget,
    timeout: Duration,
    /// The command being read: its charge and when its deadline passes.
    command: Option<(Charge, Instant)>,
    /// Bytes at the front of the buffer that are an opened frame for the assembler (which holds
    /// the budget charged for it, [`Assembler::prepay`]).
    plain: usize,
    key: Option<CurvePublicKey>,
    /// The routing identity announced in the server's READY, if any.
    identity: Option<Bytes>,
}

impl std::fmt::Debug for PeerCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCodec")
            .field("curve", &self.curve.is_some())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PeerCodec {
    /// A codec for a newly accepted peer: NULL for `security` `None`, otherwise CURVE.
    pub fn new(
        limits: FrameLimits,
        budget: Budget,
        timeout: Duration,
        security: Option<Arc<CurveSecurity>>,
    ) -> Self {
        Self {
            assembler: Assembler::new(limits, budget.clone(), timeout),
            curve: security.map(Curve::Greeting),
            limits,
            budget,
            timeout,
            command: None,
            plain: 0,
            key: None,
            identity: None,
        }
    }

    /// Announces `identity` as the server's routing identity in its READY (a Freelance
    /// server's public endpoint, RFC 10); by default none.
    pub fn announce_identity(mut self, identity: Option<Bytes>) -> Self {
        self.identity = identity;
        self
    }

    /// Appends what the server sends as soon as the connection is accepted: the whole NULL
    /// greeting, or for CURVE its first 11 octets (signature and major version), the rest
    /// following once the peer's greeting has named its mechanism. libzmq waits for those 11
    /// octets before it sends the rest of its own greeting (RFC 37: "the peer SHALL send to the
    /// other a partial greeting sufficient to trigger version detection. This is the first 11
    /// octets of the greeting").
    pub fn greeting_start(&self, out: &mut BytesMut) {
        let mut greeting = BytesMut::with_capacity(GREETING);
        link::encode_greeting(&mut greeting);
        let start = if self.curve.is_none() {
            GREETING
        } else {
            GREETING_START
        };
        out.put_slice(&greeting[..start]);
    }

    /// The client's permanent key, once a CURVE handshake has admitted it.
    pub fn client_key(&self) -> Option<CurvePublicKey> {
        self.key
    }

    /// How far the peer has got with its messages, in bytes, to tell progress from stalling:
    /// message frames taken in (not commands), and for CURVE the sealed MESSAGE being read so
    /// far (of `buf`, what has arrived). It can fall back when a MESSAGE turns out to carry a
    /// command, so only a new high counts as progress.
    pub fn progress(&self, buf: &[u8]) -> u64 {
        let sealed = match (&self.command, &self.curve) {
            (Some((charge, _)), Some(Curve::Open(_))) => buf.len().min(charge.bytes()) as u64,
            _ => 0,
        };
        self.assembler.taken() + sealed
    }

    /// When the message or command begun must be whole; `None` between them.
    pub fn deadline(&self) -> Option<Instant> {
        let command = self.command.as_ref().map(|(_, deadline)| *deadline);
        match (command, self.assembler.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Violation::Stalled`] if `now` is past [`PeerCodec::deadline`].
    pub fn check(&self, now: Instant) -> Result<(), Violation> {
        match self.command {
            Some((_, deadline)) if now >= deadline => Err(Violation::Stalled(self.timeout)),
            _ => self.assembler.check(now),
        }
    }

    /// How many bytes the buffer may hold for the next step: the command being read, whole.
    pub fn wanted(&self, buf: &[u8], buffer_size: usize) -> usize {
        match &self.command {
            Some((charge, _)) => charge.bytes().max(buffer_size),
            None if self.plain > 0 => buf.len().max(buffer_size),
            None => buffer_size,
        }
    }

    /// What to do with `buf`, the bytes read and not yet consumed; anything to send back is
    /// appended to `out`. The step's `consumed` bytes are to be dropped from the front of `buf`.
    /// `buf` is mutable because MESSAGE commands are opened in place.
    pub fn next(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        out: &mut BytesMut,
    ) -> Result<Step, Violation> {
        if self.plain > 0 {
            let plain = self.plain;
            return self.opened(now, &buf[..plain], out);
        }
        if buf.is_empty() {
            // Past the deadline even with nothing new, as the assembler reports it.
            self.check(now)?;
            return Ok(Step::Pending);
        }
        match self.curve.take() {
            None => {
                let step = self.assembler.next(now, buf)?;
                if let Step::Ready { .. } = step {
                    link::encode_ready(out, b"ROUTER", self.identity.as_deref());
                }
                if let Step::Ping { context, .. } = &step {
                    link::encode_pong(out, context);
                }
                Ok(step)
            }
            Some(Curve::Greeting(security)) => self.greeting(now, security, buf, out),
            Some(Curve::Handshake(server, security)) => {
                self.handshake(now, server, security, buf, out)
            }
            Some(Curve::Open(session)) => self.message(now, session, buf, out),
        }
    }

    /// Appends a message for the peer.
    pub fn encode_message(&mut self, out: &mut BytesMut, frames: &[Bytes]) {
        match &mut self.curve {
            Some(Curve::Open(session)) => {
                for (i, frame) in frames.iter().enumerate() {
                    let flags = if i + 1 < frames.len() {
                        MESSAGE_MORE
                    } else {
                        0
                    };
                    session.seal(flags, frame, out);
                }
            }
            _ => link::encode_message(out, frames),
        }
    }

    /// Bytes [`PeerCodec::encode_message`] appends for `frames`.
    pub fn encoded_len(&self, frames: &[Bytes]) -> usize {
        match &self.curve {
            Some(Curve::Open(_)) => frames.iter().map(|f| Session::sealed_len(f.len())).sum(),
            _ => link::encoded_len(frames),
        }
    }

    /// Hands the assembler the opened frame at the front of `plain`.
    fn opened(
        &mut self,
        now: Instant,
        plain: &[u8],
        out: &mut BytesMut,
    ) -> Result<Step, Violation> {
        let step = self.assembler.next(now, plain)?;
        self.plain -= consumed(&step);
        if self.plain == 0 {
            self.assembler.refund();
        }
        if let Step::Ping { context, .. } = &step {
            // A PING inside a box is answered inside a box.
            self.seal_pong(context, out);
        }
        Ok(step)
    }

    fn greeting(
        &mut self,
        now: Instant,
        security: Arc<CurveSecurity>,
        buf: &mut [u8],
        out: &mut BytesMut,
    ) -> Result<Step, Violation> {
        if buf.len() < GREETING {
            if buf[0] != 0xff {
                return Err(Violation::Signature);
            }
            self.curve = Some(Curve::Greeting(security));
            return Ok(Step::Pending);
        }
        if buf[0] != 0xff || buf[9] != 0x7f {
            return Err(Violation::Signature);
        }
        if buf[10] < 3 {
            return Err(Violation::Version(buf[10]));
        }
        let mechanism = &buf[MECHANISM..MECHANISM + MECHANISM_LEN];
        if mechanism == NULL_MECHANISM && security.allow_null {
            // A NULL peer on an endpoint that serves both: the assembler reads it all,
            // greeting included.
            let mut greeting = BytesMut::with_capacity(GREETING);
            link::encode_greeting(&mut greeting);
            out.put_slice(&greeting[GREETING_START..]);
            return self.next(now, buf, out);
        }
        if mechanism != CURVE_MECHANISM {
            let name = String::from_utf8_lossy(mechanism);
            return Err(Violation::Mechanism(
                name.trim_end_matches('\0').to_string(),
            ));
        }
        // RFC 25: the client's greeting has as-server 0.
        if buf[32] != 0 {
            return Err(Violation::Greeting);
        }
        let mut greeting = BytesMut::with_capacity(GREETING);
        crate::curve::encode_greeting(&mut greeting, true);
        out.put_slice(&greeting[GREETING_START..]);
        self.curve = Some(Curve::Handshake(
            CurveServer::new(security.keys.clone()),
            security,
        ));
        Ok(Step::Consumed(GREETING))
    }

    /// The command at the front of `buf` once whole: its header length and size; or the step to
    /// take until it is (pending, or blocked on the budget). Charges its bytes to the budget
    /// before they are read, and starts its deadline.
    fn whole_command(
        &mut self,
        now: Instant,
        buf: &[u8],
        max: usize,
        handshake: bool,
    ) -> Result<Result<(usize, usize), Step>, Violation> {
        let flags = buf[0];
        // The handshake's commands carry the COMMAND flag; libzmq sends MESSAGE in a data frame
        // (its MORE and COMMAND flags are inside the box). MORE outside a box means nothing.
        if flags & !(FLAG_LONG | FLAG_COMMAND) != 0 || (handshake && flags & FLAG_COMMAND == 0) {
            return Err(Violation::Flags(flags));
        }
        let Some((header, size)) = frame_header(buf) else {
            return Ok(Err(Step::Pending));
        };
        if size > max as u64 {
            return Err(Violation::FrameTooLarge {
                size,
                max: max as u64,
            });
        }
        let total = header + size as usize;
        // A MESSAGE's charge passes to the frame it opens into: enough for that frame's place
        // in its message too, so that opening it never waits for the budget.
        let charged = if handshake {
            total
        } else {
            total + OPENED_OVERHEAD
        };
        if self.command.is_none() {
            self.command = Some((self.budget.charge(), now + self.timeout));
        }
        let Some((charge, _)) = self.command.as_mut() else {
            return Ok(Err(Step::Pending));
        };
        if charge.bytes() < charged && !charge.try_grow(charged - charge.bytes()) {
            return Ok(Err(Step::Blocked));
        }
        if buf.len() < total {
            return Ok(Err(Step::Pending));
        }
        Ok(Ok((header, size as usize)))
    }

    fn handshake(
        &mut self,
        now: Instant,
        mut server: CurveServer,
        security: Arc<CurveSecurity>,
        buf: &mut [u8],
        out: &mut BytesMut,
    ) -> Result<Step, Violation> {
        let (header, size) = match self.whole_command(now, buf, MAX_COMMAND, true)? {
            Ok(whole) => whole,
            Err(step) => {
                self.curve = Some(Curve::Handshake(server, security));
                return Ok(step);
            }
        };
        let body = &buf[header..header + size];
        let consumed = header + size;
        self.command = None;
        let curve = Violation::Curve;
        if server.awaits_hello() {
            server.hello(&mut OsRng, body, out).map_err(curve)?;
            self.curve = Some(Curve::Handshake(server, security));
            return Ok(Step::Consumed(consumed));
        }
        let initiated = server.initiate(body).map_err(curve)?;
        if !security.clients.admits(&initiated.client_key) {
            // RFC 26: "A server SHALL indicate an authentication failure by sending an ERROR
            // command back to the client."
            encode_error(out, "client key not allowed");
            return Err(Violation::Unauthorized(initiated.client_key.prefix()));
        }
        // The client's metadata goes to the assembler as a NULL READY would, so that its socket
        // type and identity are checked as any peer's are.
        let mut plain =
            BytesMut::with_capacity(GREETING + LONG_HEADER + 8 + initiated.metadata.len());
        link::encode_greeting(&mut plain);
        let ready_len = 6 + initiated.metadata.len();
        if ready_len > MAX_COMMAND {
            return Err(Violation::CommandTooLarge {
                size: ready_len as u64,
            });
        }
        link::encode_ready_with(&mut plain, &initiated.metadata);
        let mut at = 0;
        let ready = loop {
            match self.assembler.next(now, &plain[at..])? {
                Step::Consumed(n) => at += n,
                Step::Ready { ready, .. } => break ready,
                _ => return Err(Violation::Handshake("INITIATE metadata".into())),
            }
        };
        self.key = Some(initiated.client_key);
        let metadata = link::ready_metadata(b"ROUTER", self.identity.as_deref());
        self.curve = Some(Curve::Open(initiated.accept(&metadata, out)));
        Ok(Step::Ready { consumed, ready })
    }

    fn message(
        &mut self,
        now: Instant,
        mut session: Session,
        buf: &mut [u8],
        out: &mut BytesMut,
    ) -> Result<Step, Violation> {
        let max = usize::try_from(self.limits.max_frame)
            .unwrap_or(usize::MAX)
            .saturating_add(MESSAGE_OVERHEAD);
        let (header, size) = match self.whole_command(now, buf, max, false)? {
            Ok(whole) => whole,
            Err(step) => {
                self.curve = Some(Curve::Open(session));
                return Ok(step);
            }
        };
        let total = header + size;
        let opened = session.open(&mut buf[header..total]);
        self.curve = Some(Curve::Open(session));
        let (flags, range) = opened.map_err(Violation::Curve)?;
        let start = header + range.start;
        let len = range.len();
        // The frame as a plain ZMTP frame, in place: its header written just before its body.
        let mut frame_flags = 0;
        if flags & MESSAGE_MORE != 0 {
            frame_flags |= FLAG_MORE;
        }
        if flags & MESSAGE_COMMAND != 0 {
            frame_flags |= FLAG_COMMAND;
        }
        let frame_header = if len > 255 {
            frame_flags |= FLAG_LONG;
            buf[start - LONG_HEADER + 1..start].copy_from_slice(&(len as u64).to_be_bytes());
            LONG_HEADER
        } else {
            buf[start - 1] = len as u8;
            SHORT_HEADER
        };
        buf[start - frame_header] = frame_flags;
        let front = start - frame_header;
        self.plain = total - front;
        if let Some((charge, _)) = self.command.take() {
            self.assembler.prepay(charge);
        }
        if frame_flags & FLAG_COMMAND != 0 {
            // A command is handled at once, so that a PONG is not held behind the next read.
            let step = self.opened(now, &buf[front..total], out)?;
            return Ok(shift(step, front));
        }
        Ok(Step::Consumed(front))
    }

    fn seal_pong(&mut self, context: &PingContext, out: &mut BytesMut) {
        if let Some(Curve::Open(session)) = &mut self.curve {
            let mut pong = Vec::with_capacity(5 + context.as_bytes().len());
            pong.extend_from_slice(b"\x04PONG");
            pong.extend_from_slice(context.as_bytes());
            session.seal(MESSAGE_COMMAND, &pong, out);
        }
    }
}

/// The bytes a step took.
fn consumed(step: &Step) -> usize {
    match step {
        Step::Pending | Step::Blocked => 0,
        Step::Consumed(n) => *n,
        Step::Ready { consumed, .. }
        | Step::Ping { consumed, .. }
        | Step::Message { consumed, .. } => *consumed,
    }
}

/// `step` with `before` more bytes taken in front of what it took.
fn shift(step: Step, before: usize) -> Step {
    match step {
        Step::Pending | Step::Blocked => Step::Consumed(before),
        Step::Consumed(n) => Step::Consumed(before + n),
        Step::Ready { consumed, ready } => Step::Ready {
            consumed: before + consumed,
            ready,
        },
        Step::Ping { consumed, context } => Step::Ping {
            consumed: before + consumed,
            context,
        },
        Step::Message { consumed, message } => Step::Message {
            consumed: before + consumed,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use proptest::prelude::*;

    use super::*;
    use crate::curve::CurveClient;
    use crate::inspect::LONG_HEADER;
    use crate::Rule;

    const LIMITS: FrameLimits = FrameLimits {
        max_frame: 4096,
        max_message: 16384,
        max_frames: 16,
    };
    const DEALER: &[u8] = b"\x0bSocket-Type\x00\x00\x00\x06DEALER";

    fn security(allow_null: bool) -> Arc<CurveSecurity> {
        Arc::new(CurveSecurity {
            keys: Arc::new(CurveKeyPair::generate()),
            clients: ClientFilter::default(),
            allow_null,
        })
    }

    /// What a run saw: the steps that matter, and how it ended.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        steps: Vec<String>,
        verdict: Option<Rule>,
    }

    /// The body of the command at the front of `buf`, once whole.
    fn take(buf: &mut BytesMut) -> Option<BytesMut> {
        let (header, size) = frame_header(buf)?;
        if buf.len() < header + size as usize {
            return None;
        }
        buf.advance(header);
        Some(buf.split_to(size as usize))
    }

    /// A CURVE client sending `messages` to a codec, its stream cut into reads of `cuts` (one
    /// read per step when empty), with the byte at `corrupt.0` of its stream flipped by
    /// `corrupt.1`.
    fn run(messages: &[Vec<u8>], corrupt: Option<(usize, u8)>, cuts: &[usize]) -> Seen {
        let security = security(false);
        let budget = Budget::new(1024 * 1024);
        let mut codec = PeerCodec::new(
            LIMITS,
            budget.clone(),
            Duration::from_secs(60),
            Some(security.clone()),
        );
        let mut client = CurveClient::new(
            &mut OsRng,
            security.keys.public(),
            Arc::new(CurveKeyPair::generate()),
        );
        let now = Instant::now();
        let mut stream = BytesMut::new();
        crate::curve::encode_greeting(&mut stream, false);
        client.hello(&mut stream);
        let mut sent = 0; // bytes of `stream` given to the codec
        let mut buf = BytesMut::new();
        let mut replies = BytesMut::new();
        codec.greeting_start(&mut replies);
        let mut greeted = false;
        let mut corrupted = false;
        let mut session = None;
        let mut cut = cuts.iter().cycle();
        let mut seen = Seen {
            steps: Vec::new(),
            verdict: None,
        };
        for _ in 0..10_000 {
            // The client answers what the codec sent.
            if !greeted && replies.len() >= GREETING {
                replies.advance(GREETING);
                greeted = true;
            }
            if greeted {
                while let Some(command) = take(&mut replies) {
                    let mut out = BytesMut::new();
                    if session.is_none() && command.starts_with(b"\x07WELCOME") {
                        client
                            .welcome(&mut OsRng, &command, DEALER, &mut out)
                            .unwrap();
                    } else if session.is_none() && command.starts_with(b"\x05READY") {
                        let (_, mut s) = client.ready(&command).unwrap();
                        for m in messages {
                            s.seal(0, m, &mut out);
                        }
                        s.seal(MESSAGE_COMMAND, b"\x04PING\x00\x01ab", &mut out);
                        session = Some(s);
                    }
                    stream.extend_from_slice(&out);
                }
            }
            if let Some((at, flip)) = corrupt {
                if at < stream.len() && !corrupted {
                    stream[at] ^= flip;
                    corrupted = true;
                }
            }
            if sent < stream.len() {
                let n = cut
                    .next()
                    .map_or(stream.len() - sent, |&c| c.min(stream.len() - sent));
                buf.extend_from_slice(&stream[sent..sent + n]);
                sent += n;
            }
            let mut progress = false;
            loop {
                let mut out = BytesMut::new();
                let step = codec.next(now, &mut buf, &mut out);
                replies.extend_from_slice(&out);
                assert!(budget.used() <= budget.limit());
                let consumed = match step {
                    Err(violation) => {
                        seen.verdict = Some(violation.rule());
                        return seen;
                    }
                    Ok(Step::Pending) => break,
                    Ok(Step::Blocked) => panic!("blocked with room in the budget"),
                    Ok(Step::Consumed(n)) => n,
                    Ok(Step::Ready { consumed, ready }) => {
                        seen.steps.push(format!("ready {:?}", ready.socket_type));
                        consumed
                    }
                    Ok(Step::Ping { consumed, context }) => {
                        seen.steps.push(format!("ping {context:?}"));
                        consumed
                    }
                    Ok(Step::Message { consumed, message }) => {
                        seen.steps.push(format!("message {:?}", message.frames));
                        consumed
                    }
                };
                progress = true;
                let _ = buf.split_to(consumed);
            }
            if !progress && sent == stream.len() && replies.is_empty() {
                break;
            }
        }
        seen
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_curve_stream_cut_anywhere_gives_the_same_steps_and_verdict(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..4),
            corrupt in proptest::option::of((0usize..3000, 1u8..=255)),
            cuts in proptest::collection::vec(1usize..300, 1..16),
        ) {
            let whole = run(&messages, corrupt, &[]);
            let cut = run(&messages, corrupt, &cuts);
            prop_assert_eq!(&whole, &cut);
            if corrupt.is_none() {
                prop_assert_eq!(whole.verdict, None);
                prop_assert_eq!(whole.steps.len(), 2 + messages.len());
            }
        }
    }

    #[test]
    fn a_null_peer_is_served_only_where_allowed() {
        for allow_null in [false, true] {
            let mut codec = PeerCodec::new(
                LIMITS,
                Budget::new(1024 * 1024),
                Duration::from_secs(60),
                Some(security(allow_null)),
            );
            let mut out = BytesMut::new();
            codec.greeting_start(&mut out);
            assert_eq!(out.len(), 11, "signature and major version first");
            let mut buf = BytesMut::new();
            link::encode_greeting(&mut buf);
            link::encode_ready(&mut buf, b"DEALER", None);
            let step = codec.next(Instant::now(), &mut buf, &mut out);
            if allow_null {
                assert!(matches!(step, Ok(Step::Consumed(GREETING))), "{step:?}");
                assert_eq!(&out[12..16], b"NULL");
            } else {
                assert_eq!(step.unwrap_err().rule(), Rule::Greeting);
            }
        }
    }

    #[test]
    fn a_sealed_frame_waits_for_budget_and_a_stalled_one_passes_its_deadline() {
        let security = security(false);
        let budget = Budget::new(16 * 1024);
        let timeout = Duration::from_secs(5);
        let mut codec = PeerCodec::new(LIMITS, budget.clone(), timeout, Some(security.clone()));
        let mut codec_out = BytesMut::new();
        let mut client = CurveClient::new(
            &mut OsRng,
            security.keys.public(),
            Arc::new(CurveKeyPair::generate()),
        );
        let now = Instant::now();
        let mut buf = BytesMut::new();
        crate::curve::encode_greeting(&mut buf, false);
        client.hello(&mut buf);
        // Greeting and HELLO.
        for _ in 0..2 {
            let step = codec.next(now, &mut buf, &mut codec_out).unwrap();
            let Step::Consumed(n) = step else {
                panic!("{step:?}")
            };
            let _ = buf.split_to(n);
        }
        codec_out.advance(GREETING - 11);
        let welcome = take(&mut codec_out).unwrap();
        client
            .welcome(&mut OsRng, &welcome, DEALER, &mut buf)
            .unwrap();
        let step = codec.next(now, &mut buf, &mut codec_out).unwrap();
        let Step::Ready { consumed, .. } = step else {
            panic!("{step:?}")
        };
        let _ = buf.split_to(consumed);
        // Someone else holds most of the budget: a 4 KiB frame's command waits for it.
        let mut held = budget.charge();
        assert!(held.try_grow(14 * 1024));
        let mut session = client.ready(&take(&mut codec_out).unwrap()).unwrap().1;
        let mut sealed = BytesMut::new();
        session.seal(0, &[5; 4000], &mut sealed);
        buf.extend_from_slice(&sealed[..LONG_HEADER + 10]);
        assert!(matches!(
            codec.next(now, &mut buf, &mut codec_out),
            Ok(Step::Blocked)
        ));
        drop(held);
        assert!(matches!(
            codec.next(now, &mut buf, &mut codec_out),
            Ok(Step::Pending)
        ));
        assert!(
            codec.wanted(&buf, 512) >= sealed.len(),
            "room for the whole command"
        );
        // Half of it, then nothing: past the deadline the peer is closed.
        let deadline = codec.deadline().expect("a command begun");
        assert_eq!(deadline, now + timeout);
        assert_eq!(
            codec.check(deadline).unwrap_err().rule(),
            Rule::MessageTimeout
        );
        buf.extend_from_slice(&sealed[LONG_HEADER + 10..]);
        let mut frames = None;
        for _ in 0..4 {
            match codec.next(now, &mut buf, &mut codec_out).unwrap() {
                Step::Consumed(n) => {
                    let _ = buf.split_to(n);
                }
                Step::Message { consumed, message } => {
                    let _ = buf.split_to(consumed);
                    frames = Some(message.frames);
                    break;
                }
                step => panic!("{step:?}"),
            }
        }
        assert_eq!(frames.unwrap(), [Bytes::from(vec![5; 4000])]);
        assert_eq!(codec.deadline(), None);
    }
}
