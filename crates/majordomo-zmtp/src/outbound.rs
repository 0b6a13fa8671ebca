//! Outbound CURVE: connections a process makes (clients, workers) carried to a CURVE server.
//!
//! zmq.rs speaks only NULL. A [`CurveOutbound`] listens on a Unix socket in a private directory;
//! each connection zmq.rs makes there is bridged to one TCP connection to the remote server:
//! NULL towards zmq.rs, CurveZMQ (RFC 26) towards the server, every frame sealed on the way out
//! and opened on the way in. The bridge completes both handshakes before it answers zmq.rs's
//! READY, so a connect that returns has a CURVE session behind it. When either side closes, the
//! other is closed: zmq.rs's peer then sees its connection end and makes a new one, as it does
//! for a broker that died.
//!
//! The remote is trusted no further than the frame limits: a frame it announces past
//! [`FrameLimits::max_frame`] closes the bridge before anything is reserved for it (zmq.rs
//! connected directly would reserve whatever size a peer announces).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use crypto_box::aead::OsRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::curve::{
    self, CurveClient, CurveError, CurveKeyPair, CurvePublicKey, MESSAGE_COMMAND, MESSAGE_MORE,
    MESSAGE_OVERHEAD,
};
use crate::guard::PrivateDir;
use crate::inspect::{
    frame_header, FrameLimits, FLAG_COMMAND, FLAG_LONG, FLAG_MORE, GREETING, MAX_COMMAND,
    MAX_PING_CONTEXT,
};
use crate::mux::link;

/// How often a bridge tries the server again while it does not accept connections.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// How long a bridge has to connect to the server and complete both handshakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a bridge ended before or while carrying a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server broke CurveZMQ, or refused this client (its ERROR's reason).
    #[error(transparent)]
    Curve(#[from] CurveError),
    /// Something that is not ZMTP, or a frame over the limits.
    #[error("{0}")]
    Protocol(&'static str),
    /// The connection and both handshakes took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("no CURVE session within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// Carries zmq.rs connections to one CURVE server; see the module documentation. The listener
/// starts on the first [`CurveOutbound::local_endpoint`] and stops when this is dropped; the
/// connections it carries go on until either side closes them.
#[derive(Debug)]
pub struct CurveOutbound {
    remote: String,
    server: CurvePublicKey,
    keys: Arc<CurveKeyPair>,
    limits: FrameLimits,
    local: OnceCell<(String, PrivateDir)>,
    cancel: CancellationToken,
}

impl Drop for CurveOutbound {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl CurveOutbound {
    /// Bridges to `remote` (`host:port`), whose public key is `server`, as the holder of `keys`,
    /// accepting frames from it within `limits`.
    pub fn new(
        remote: impl Into<String>,
        server: CurvePublicKey,
        keys: Arc<CurveKeyPair>,
        limits: FrameLimits,
    ) -> Self {
        Self {
            remote: remote.into(),
            server,
            keys,
            limits,
            local: OnceCell::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The server's address.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The `ipc://` endpoint zmq.rs connects to, listening from the first call on. Must be
    /// called within a tokio runtime.
    pub async fn local_endpoint(&self) -> io::Result<String> {
        let (endpoint, _) = self
            .local
            .get_or_try_init(|| async {
                let dir = PrivateDir::create()?;
                let path = dir.0.join("s");
                let listener = UnixListener::bind(&path)?;
                let bridge = Bridge {
                    remote: self.remote.clone(),
                    server: self.server,
                    keys: self.keys.clone(),
                    limits: self.limits,
                    refusals: std::sync::Mutex::default(),
                };
                let cancel = self.cancel.clone();
                let span = tracing::info_span!("curve", remote = %self.remote);
                tokio::spawn(accept(listener, Arc::new(bridge), cancel).instrument(span));
                Ok::<_, io::Error>((format!("ipc://{}", path.display()), dir))
            })
            .await?;
        Ok(endpoint.clone())
    }
}

/// What every bridge of one [`CurveOutbound`] needs.
#[derive(Debug)]
struct Bridge {
    remote: String,
    server: CurvePublicKey,
    keys: Arc<CurveKeyPair>,
    limits: FrameLimits,
    /// When a refusal was last logged, and how many went unlogged since.
    refusals: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Bridge {
    /// Logs why a connection ended. A refusal by the server (its ERROR, a broken handshake, no
    /// CURVE at all, no session in time) is what a user must see to fix a key: a warning, at
    /// most one a second per server, with the count of those left out. A connection that
    /// closes is routine.
    fn ended(&self, error: &BridgeError) {
        if !is_refusal(error) {
            debug!(%error, "CURVE connection ended");
            return;
        }
        let now = std::time::Instant::now();
        let mut refusals = self
            .refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, suppressed) = &mut *refusals;
        if last.is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1)) {
            *suppressed += 1;
            return;
        }
        *last = Some(now);
        let more = std::mem::take(suppressed);
        tracing::warn!(%error, remote = %self.remote, more, "the CURVE server refused this connection");
    }
}

/// Whether the server refused the connection, rather than one side closing it.
fn is_refusal(error: &BridgeError) -> bool {
    match error {
        BridgeError::Curve(_) | BridgeError::Timeout => true,
        BridgeError::Protocol(what) => *what == NO_CURVE,
        BridgeError::Io(_) => false,
    }
}

/// Why a server that answers without CURVE is left.
const NO_CURVE: &str = "the server does not offer CURVE";

async fn accept(listener: UnixListener, bridge: Arc<Bridge>, cancel: CancellationToken) {
    loop {
        let local = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((local, _)) => local,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        // A connection outlives the [`CurveOutbound`] that accepted it: it ends when zmq.rs's
        // socket or the server closes it (a client may drop its connector and keep its socket).
        let bridge = bridge.clone();
        tokio::spawn(async move {
            if let Err(error) = bridge.carry(local).await {
                bridge.ended(&error);
            }
        });
    }
}

/// Reads into `buf` until it holds the frame at its front whole, at most `max` bytes of body;
/// returns its flags and body.
async fn read_frame<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, BytesMut), BridgeError> {
    loop {
        if let Some(frame) = take_whole(buf, max)? {
            return Ok(frame);
        }
        if let Some((header, size)) = frame_header(buf) {
            buf.reserve((header + size as usize).saturating_sub(buf.len()));
        }
        if read.read_buf(buf).await? == 0 {
            return Err(BridgeError::Protocol("the connection closed"));
        }
    }
}

/// The frame at the front of `buf` if it is whole (at most `max` bytes of body): its flags and
/// body.
fn take_whole(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, BytesMut)>, BridgeError> {
    let Some((header, size)) = frame_header(buf) else {
        return Ok(None);
    };
    if size > max as u64 {
        return Err(BridgeError::Protocol("a frame over the limit"));
    }
    if buf.len() < header + size as usize {
        return Ok(None);
    }
    let flags = buf[0];
    buf.advance(header);
    Ok(Some((flags, buf.split_to(size as usize))))
}

/// Reads a 64-octet greeting.
async fn read_greeting<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
) -> Result<[u8; GREETING], BridgeError> {
    while buf.len() < GREETING {
        if read.read_buf(buf).await? == 0 {
            return Err(BridgeError::Protocol(
                "the connection closed in the greeting",
            ));
        }
    }
    let mut greeting = [0; GREETING];
    greeting.copy_from_slice(&buf[..GREETING]);
    buf.advance(GREETING);
    if greeting[0] != 0xff || greeting[9] != 0x7f || greeting[10] < 3 {
        return Err(BridgeError::Protocol("not a ZMTP 3 greeting"));
    }
    Ok(greeting)
}

impl Bridge {
    /// Carries one zmq.rs connection until either side closes.
    async fn carry(&self, local: UnixStream) -> Result<(), BridgeError> {
        let (mut local_read, mut local_write) = local.into_split();
        let mut local_buf = BytesMut::with_capacity(512);
        let mut remote_buf = BytesMut::with_capacity(512);
        let handshake = async {
            // NULL towards zmq.rs: its READY's metadata is what the server is told.
            let mut out = BytesMut::new();
            link::encode_greeting(&mut out);
            local_write.write_all(&out).await?;
            read_greeting(&mut local_read, &mut local_buf).await?;
            let (_, ready) = read_frame(&mut local_read, &mut local_buf, MAX_COMMAND).await?;
            let metadata = ready
                .strip_prefix(b"\x05READY")
                .ok_or(BridgeError::Protocol("zmq.rs sent no READY"))?
                .to_vec();
            // CURVE towards the server, which may not listen yet: tried again, as zmq.rs does,
            // within the handshake's time (zmq.rs's own connect waits for the READY meanwhile).
            let remote = loop {
                match TcpStream::connect(&self.remote).await {
                    Ok(remote) => break remote,
                    Err(error) => {
                        debug!(%error, "server not reachable yet");
                        tokio::time::sleep(CONNECT_RETRY).await;
                    }
                }
            };
            let _ = remote.set_nodelay(true);
            let (mut remote_read, mut remote_write) = remote.into_split();
            let mut client = CurveClient::new(&mut OsRng, self.server, self.keys.clone());
            out.clear();
            curve::encode_greeting(&mut out, false);
            client.hello(&mut out);
            remote_write.write_all(&out).await?;
            let greeting = read_greeting(&mut remote_read, &mut remote_buf).await?;
            // The mechanism only: libzmq leaves as-server 0 whatever its role.
            if greeting[12..32] != curve::CURVE_MECHANISM[..] {
                return Err(BridgeError::Protocol(NO_CURVE));
            }
            let (_, welcome) = read_frame(&mut remote_read, &mut remote_buf, MAX_COMMAND).await?;
            out.clear();
            client.welcome(&mut OsRng, &welcome, &metadata, &mut out)?;
            remote_write.write_all(&out).await?;
            let (_, ready) = read_frame(&mut remote_read, &mut remote_buf, MAX_COMMAND).await?;
            let (server_metadata, session) = client.ready(&ready)?;
            // Now zmq.rs's connection is ready: with the server's metadata.
            out.clear();
            link::encode_ready_with(&mut out, &server_metadata);
            local_write.write_all(&out).await?;
            Ok::<_, BridgeError>((remote_read, remote_write, session))
        };
        let (mut remote_read, mut remote_write, session) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| BridgeError::Timeout)??;
        let (mut sealer, mut opener) = session.split();
        let (pongs, mut pong_queue) = mpsc::channel::<Vec<u8>>(4);
        let max = usize::try_from(self.limits.max_frame).unwrap_or(usize::MAX);
        let up = async {
            // zmq.rs to the server: every frame sealed, as many per write as have arrived.
            let mut out = BytesMut::new();
            loop {
                tokio::select! {
                    read = local_read.read_buf(&mut local_buf) => {
                        if read? == 0 {
                            return Ok::<(), BridgeError>(());
                        }
                    }
                    Some(pong) = pong_queue.recv() => {
                        out.clear();
                        sealer.seal(MESSAGE_COMMAND, &pong, &mut out);
                        remote_write.write_all(&out).await?;
                        continue;
                    }
                }
                out.clear();
                while let Some((header, size)) = frame_header(&local_buf) {
                    if size > max as u64 {
                        return Err(BridgeError::Protocol("zmq.rs sent a frame over the limit"));
                    }
                    let total = header + size as usize;
                    if local_buf.len() < total {
                        local_buf.reserve(total - local_buf.len());
                        break;
                    }
                    let flags = local_buf[0];
                    local_buf.advance(header);
                    let frame = local_buf.split_to(size as usize);
                    let mut inner = 0;
                    if flags & FLAG_MORE != 0 {
                        inner |= MESSAGE_MORE;
                    }
                    if flags & FLAG_COMMAND != 0 {
                        inner |= MESSAGE_COMMAND;
                    }
                    sealer.seal(inner, &frame, &mut out);
                }
                if !out.is_empty() {
                    remote_write.write_all(&out).await?;
                }
            }
        };
        let down = async {
            // The server to zmq.rs: every frame opened, as many per write as have arrived;
            // PINGs answered in a box.
            let limit = max.saturating_add(MESSAGE_OVERHEAD);
            let mut out = BytesMut::new();
            loop {
                // At least one whole frame, then whatever else is whole already.
                let first = read_frame(&mut remote_read, &mut remote_buf, limit).await?;
                let mut next = Some(first);
                out.clear();
                while let Some((flags, mut frame)) = next.take() {
                    if flags & !(FLAG_LONG | FLAG_COMMAND) != 0 {
                        return Err(BridgeError::Protocol(
                            "reserved frame flags from the server",
                        ));
                    }
                    let (inner, range) = opener.open(&mut frame)?;
                    let body = &frame[range];
                    if inner & MESSAGE_COMMAND != 0 {
                        if let Some(context) = ping_context(body) {
                            let mut pong = b"\x04PONG".to_vec();
                            pong.extend_from_slice(context);
                            let _ = pongs.try_send(pong);
                        }
                    } else {
                        link::encode_frame(&mut out, body, inner & MESSAGE_MORE != 0);
                    }
                    next = take_whole(&mut remote_buf, limit)?;
                }
                if !out.is_empty() {
                    local_write.write_all(&out).await?;
                }
            }
        };
        tokio::select! {
            end = up => end,
            end = down => end,
        }
    }
}

/// The context of a PING command (`%d4 "PING" ping-ttl ping-context`), if `body` is one.
fn ping_context(body: &[u8]) -> Option<&[u8]> {
    let context = body.strip_prefix(b"\x04PING")?.get(2..)?;
    (context.len() <= MAX_PING_CONTEXT).then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_connections_that_close() {
        assert!(is_refusal(&BridgeError::Curve(CurveError::Box("WELCOME"))));
        assert!(is_refusal(&BridgeError::Timeout));
        assert!(is_refusal(&BridgeError::Protocol(NO_CURVE)));
        assert!(!is_refusal(&BridgeError::Protocol("the connection closed")));
        assert!(!is_refusal(&BridgeError::Io(io::Error::from(
            io::ErrorKind::ConnectionReset
        ))));
    }
}
