//! The guard on tokio: the accept loop, admission, and the relay of each connection.
//!
//! Each accepted connection is one task that relays both directions: the peer's bytes through an
//! [`Inspector`] of [`Origin::Peer`] (limits, PING answered, READY given an identity), zmq.rs's
//! bytes through one of [`Origin::Server`] (only to know where a PONG may go). Each direction
//! reads into a fixed buffer and writes what the inspector lets through in one write per read;
//! nothing is allocated per frame.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use majordomo_proto::peer::{assigned_identity, assigned_local_identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};

use crate::admission::Admission;
use crate::config::{GuardConfig, GuardConfigError};
use crate::inspect::{Action, FrameLimits, Inspector, Origin, PingContext, Violation};
use crate::mux::budget::Budget;
use crate::Rule;

/// Why a guard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// A limit is unusable.
    #[error(transparent)]
    Config(#[from] GuardConfigError),
    /// Binding the TCP port or creating the private socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a guard has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Connections taken.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// PINGs answered with a PONG.
    pub pongs: u64,
    /// Front-end mode: bytes of the inbound budget held now (messages being read and not yet
    /// written to the link); never more than [`GuardConfig::inbound_budget`]. A budget shared
    /// with other guards ([`GuardConfig::shared_inbound_budget`]) is reported whole by each.
    pub inbound_held: u64,
    /// Front-end mode: replies dropped because their peer did not read them (it was closed
    /// when they passed its outbound budget), or because it was already gone.
    pub dropped: u64,
    refused: [u64; Rule::ALL.len()],
}

impl GuardStats {
    /// How many connections `rule` closed or refused.
    pub fn count(&self, rule: Rule) -> u64 {
        self.refused[rule.index()]
    }

    /// Every rule with its count, in [`Rule::ALL`] order.
    pub fn by_rule(&self) -> impl Iterator<Item = (Rule, u64)> + '_ {
        Rule::ALL.iter().map(|&rule| (rule, self.count(rule)))
    }
}

/// A guard on one TCP port or Unix socket. It runs until dropped; dropping it stops accepting,
/// closes every connection it serves and removes its private directory.
#[derive(Debug)]
pub struct Guard {
    local_addr: Option<SocketAddr>,
    link_prefix: Option<bytes::Bytes>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _dir: PrivateDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Guard {
    /// Binds `addr` and starts guarding it. Returns the guard and the Unix listener that the
    /// server behind it must adopt (zmq.rs: `Socket::bind_listener`). The listener lives in a new
    /// directory that only this user can open, and nothing else listens there.
    ///
    /// Must be called within a tokio runtime: the accept loop is spawned on it.
    pub async fn bind(
        addr: SocketAddr,
        config: GuardConfig,
    ) -> Result<(Guard, StdUnixListener), GuardError> {
        Self::check(&config)?;
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As `TcpListener::bind` does, so that a restarted server can bind at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(config.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        let span = info_span!("guard", listen = %local_addr);
        Self::start(Listener::Tcp(listener), Some(local_addr), config, span)
    }

    /// Binds a Unix socket at `path` (an `ipc://` endpoint) and starts guarding it, as
    /// [`Guard::bind`] does a TCP port: the same limits, budgets and front end, so that a local
    /// peer cannot make the server hold more than a remote one. The socket file is made with
    /// mode 0600 whatever the umask (see [`bind_private_unix`]); a file already at `path` is
    /// replaced, as libzmq's ipc bind does. The caller removes it when done. Peers on it have
    /// no address: only [`GuardConfig::max_connections`] limits how many connect, and their
    /// identities name them `local#N`.
    ///
    /// Must be called within a tokio runtime: the accept loop is spawned on it.
    pub async fn bind_unix(
        path: &std::path::Path,
        config: GuardConfig,
    ) -> Result<(Guard, StdUnixListener), GuardError> {
        Self::check(&config)?;
        let listener = bind_private_unix(path)?;
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        let span = info_span!("guard", listen = %path.display());
        Self::start(Listener::Unix(listener), None, config, span)
    }

    fn check(config: &GuardConfig) -> Result<(), GuardConfigError> {
        if config.front_end {
            config.validate_front_end()
        } else {
            config.validate()
        }
    }

    fn start(
        listener: Listener,
        local_addr: Option<SocketAddr>,
        config: GuardConfig,
        span: tracing::Span,
    ) -> Result<(Guard, StdUnixListener), GuardError> {
        let dir = PrivateDir::create()?;
        let socket_path = dir.0.join("s");
        let upstream = StdUnixListener::bind(&socket_path)?;
        let shared = Arc::new(Shared {
            limits: config.frame_limits(),
            inbound: config
                .inbound_pool
                .clone()
                .unwrap_or_else(|| Budget::new(config.inbound_budget)),
            admission: Mutex::new(Admission::new(&config)),
            config,
            socket_path,
            counters: Counters::default(),
            log: Mutex::new(LogLimiter::default()),
        });
        let cancel = CancellationToken::new();
        let link = shared
            .config
            .front_end
            .then(|| front::Link::start(shared.clone(), cancel.clone()));
        let link_prefix = link.as_ref().map(|link| link.prefix.clone());
        tokio::spawn(accept_loop(listener, shared.clone(), link, cancel.clone()).instrument(span));
        Ok((
            Guard {
                local_addr,
                link_prefix,
                shared,
                cancel,
                _dir: dir,
            },
            upstream,
        ))
    }

    /// The TCP address it listens on, with an ephemeral port resolved; `None` on a Unix
    /// socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// What it has done so far.
    pub fn stats(&self) -> GuardStats {
        self.shared.stats()
    }

    /// Front-end mode: the routing identity of the guard's first link to the server. Messages
    /// from this zmq.rs peer are `[peer-id, frames...]` or control messages (see
    /// [`crate::mux`]).
    pub fn link_identity(&self) -> Option<bytes::Bytes> {
        self.link_prefix
            .as_ref()
            .map(|prefix| front::link_identity(prefix, 0))
    }

    /// Front-end mode: whether `identity` is one of this guard's links to the server: the
    /// first ([`Guard::link_identity`]) or one made after a link failed, each under a new
    /// identity.
    pub fn is_link(&self, identity: &[u8]) -> bool {
        self.link_prefix.as_ref().is_some_and(|prefix| {
            identity.len() == prefix.len() + 4 && identity.starts_with(prefix)
        })
    }

    /// A cheap handle for reading the stats from elsewhere.
    pub fn stats_handle(&self) -> GuardStatsHandle {
        GuardStatsHandle(self.shared.clone())
    }
}

mod front;

/// A Unix listener at `path` that only this user may connect to: bound in a new directory of
/// mode 0700 beside `path`, its file set to 0600, then renamed into place, so that at no moment
/// can another user connect, whatever the umask. A file already at `path` is replaced, as
/// libzmq's ipc bind does.
pub fn bind_private_unix(path: &std::path::Path) -> io::Result<StdUnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dir = parent.join(format!(
        ".majordomo-bind-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let staged = dir.join("s");
    let bound = StdUnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    // Empty once the file has moved; on a failure it still holds it.
    let _ = std::fs::remove_dir_all(&dir);
    bound
}

/// Where a guard listens.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Where a peer connected from, for admission, identities and logs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerAddr {
    /// A TCP peer's address and port.
    Tcp(SocketAddr),
    /// A peer on a Unix socket.
    Local,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => addr.fmt(f),
            PeerAddr::Local => f.write_str("local"),
        }
    }
}

impl PeerAddr {
    /// The identity the guard gives connection number `connection` from here.
    fn identity(self, connection: u32) -> Vec<u8> {
        match self {
            PeerAddr::Tcp(addr) => assigned_identity(connection, addr),
            PeerAddr::Local => assigned_local_identity(connection),
        }
    }
}

/// A connection the guard serves, TCP or Unix: split into halves that two directions own.
pub(crate) trait PeerStream: Send + 'static {
    /// The half read from.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The half written to.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// The two halves, with Nagle off on TCP (every write is a whole batch).
    fn halves(self) -> (Self::Read, Self::Write);
}

impl PeerStream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        let _ = self.set_nodelay(true);
        self.into_split()
    }
}

impl PeerStream for UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// A directory only this user can open, under the system's temporary directory, removed with
/// what it holds when dropped; named for the process, so that the next one removes it if this
/// one is killed first (`sweep_stale`), which a `tempfile` directory's random name would not
/// allow.
#[derive(Debug)]
pub(crate) struct PrivateDir(pub(crate) PathBuf);

/// The start of every private directory's name; the process id follows.
const PRIVATE_PREFIX: &str = "majordomo-zmtp-";

impl PrivateDir {
    pub(crate) fn create() -> io::Result<Self> {
        Self::create_in(&std::env::temp_dir())
    }

    fn create_in(base: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                "{PRIVATE_PREFIX}{}-{}-{nanos:08x}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = base.join(name);
            // Mode 0700, and never an existing directory (another user's, planted in advance).
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let uid = std::fs::metadata(&path)?.uid();
                    sweep_stale(base, uid);
                    return Ok(Self(path));
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

/// Removes the private directories that processes of this user killed without a chance to
/// clean up (SIGKILL) left in `base`: those named for a process id that no longer runs.
fn sweep_stale(base: &std::path::Path, uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PRIVATE_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Not following links: only a real directory of this user's goes.
        match entry.metadata() {
            Ok(meta) if meta.is_dir() && meta.uid() == uid => {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            _ => {}
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a [`Guard`]'s stats; it keeps only the counters alive, not the guard.
#[derive(Debug, Clone)]
pub struct GuardStatsHandle(Arc<Shared>);

impl GuardStatsHandle {
    /// What the guard has done so far.
    pub fn stats(&self) -> GuardStats {
        self.0.stats()
    }
}

#[derive(Debug)]
struct Shared {
    config: GuardConfig,
    /// Front-end mode: the inbound budget of every peer of this endpoint.
    inbound: Budget,
    limits: FrameLimits,
    socket_path: PathBuf,
    admission: Mutex<Admission>,
    counters: Counters,
    log: Mutex<LogLimiter>,
}

/// The number of the next connection any guard of this process accepts. One count for all of
/// them: the identities they give peers (made from it) are then unique across the endpoints of a
/// server, whose links all reach one socket (the first peer on each of two `ipc://` endpoints
/// would otherwise have the same).
static NEXT_CONNECTION: AtomicU32 = AtomicU32::new(1);

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    pongs: AtomicU64,
    dropped: AtomicU64,
    refused: [AtomicU64; Rule::ALL.len()],
}

impl Shared {
    fn stats(&self) -> GuardStats {
        let mut refused = [0; Rule::ALL.len()];
        for (count, counter) in refused.iter_mut().zip(&self.counters.refused) {
            *count = counter.load(Ordering::Relaxed);
        }
        GuardStats {
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            open: lock(&self.admission).open() as u64,
            pongs: self.counters.pongs.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            inbound_held: self.inbound.used() as u64,
            refused,
        }
    }

    /// Counts `rule` against the peer at `addr` and logs it, at most once a second per rule.
    fn broken(&self, rule: Rule, addr: PeerAddr, detail: &dyn std::fmt::Display) {
        self.counters.refused[rule.index()].fetch_add(1, Ordering::Relaxed);
        let suppressed = lock(&self.log).admit(rule, Instant::now());
        if let Some(suppressed) = suppressed {
            warn!(peer = %addr, rule = %rule, %detail, suppressed, "peer broke a guard rule, disconnected");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain counters behind, still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One log line per rule per second: the first at once, later ones with the count left out.
#[derive(Debug, Default)]
struct LogLimiter {
    last: [Option<Instant>; Rule::ALL.len()],
    suppressed: [u64; Rule::ALL.len()],
}

impl LogLimiter {
    /// `Some(n)`: log now, `n` events having gone unlogged since the last line; `None`: not now.
    fn admit(&mut self, rule: Rule, now: Instant) -> Option<u64> {
        let i = rule.index();
        match self.last[i] {
            Some(at) if now.saturating_duration_since(at) < Duration::from_secs(1) => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

/// A connection's place in the admission table, given back when the connection ends.
struct Permit {
    shared: Arc<Shared>,
    /// The source address the connection counts against; `None` on a Unix socket.
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut admission = lock(&self.shared.admission);
        match self.ip {
            Some(ip) => admission.release(ip),
            None => admission.release_local(),
        }
    }
}

/// A connection just accepted.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Listener {
    /// The next connection; cancel-safe, as both listeners' `accept` are.
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                Ok(Accepted::Tcp(stream, addr))
            }
            Listener::Unix(listener) => Ok(Accepted::Unix(listener.accept().await?.0)),
        }
    }
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    link: Option<Arc<front::Link>>,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        // accept() is cancel-safe: a connection not yet taken stays in the kernel's queue.
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (EMFILE) or memory: the kernel keeps the connection queued;
                // pause rather than spin on the error.
                if lock(&shared.log)
                    .admit(Rule::MaxConnections, Instant::now())
                    .is_some()
                {
                    warn!(%error, "accept failed; pausing 50 ms");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (addr, ip) = match &accepted {
            Accepted::Tcp(_, addr) => (PeerAddr::Tcp(*addr), Some(addr.ip())),
            Accepted::Unix(_) => (PeerAddr::Local, None),
        };
        let admitted = {
            let mut admission = lock(&shared.admission);
            match ip {
                Some(ip) => admission.admit(ip, Instant::now()),
                None => admission.admit_local(),
            }
        };
        if let Err(rule) = admitted {
            drop(accepted);
            shared.broken(rule, addr, &"connection refused");
            continue;
        }
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let permit = Permit {
            shared: shared.clone(),
            ip,
        };
        let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let serve = Serve {
            addr,
            connection,
            permit,
            link: link.clone(),
            cancel: cancel.clone(),
        };
        match accepted {
            Accepted::Tcp(stream, _) => serve.spawn(&tracker, stream),
            Accepted::Unix(stream) => serve.spawn(&tracker, stream),
        }
    }
    // Dropping the guard cancelled every relay too; wait for them so that none outlives it.
    tracker.close();
    tracker.wait().await;
}

/// What serving one accepted connection needs, whatever its stream.
struct Serve {
    addr: PeerAddr,
    connection: u32,
    permit: Permit,
    link: Option<Arc<front::Link>>,
    cancel: CancellationToken,
}

impl Serve {
    fn spawn<S: PeerStream>(self, tracker: &TaskTracker, stream: S) {
        let Serve {
            addr,
            connection,
            permit,
            link,
            cancel,
        } = self;
        let span = info_span!("zmtp", peer = %addr, connection);
        match link {
            Some(link) => tracker.spawn(
                front::serve_peer(stream, addr, connection, permit, link, cancel).instrument(span),
            ),
            None => tracker.spawn(relay(stream, addr, connection, permit, cancel).instrument(span)),
        };
    }
}

/// How a relayed connection ended.
#[derive(Debug)]
enum End {
    PeerClosed,
    ServerClosed,
    Shutdown,
    Broken(Rule, String),
    Io(io::Error),
}

impl From<Violation> for End {
    fn from(violation: Violation) -> Self {
        End::Broken(violation.rule(), violation.to_string())
    }
}

async fn relay<S: PeerStream>(
    peer: S,
    addr: PeerAddr,
    connection: u32,
    permit: Permit,
    cancel: CancellationToken,
) {
    let shared = permit.shared.clone();
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    let end = tokio::select! {
        end = relay_inner(peer, addr, connection, &shared, deadline) => end,
        _ = cancel.cancelled() => End::Shutdown,
    };
    match end {
        End::Broken(rule, detail) => shared.broken(rule, addr, &detail),
        End::Io(error) => debug!(%error, "connection failed"),
        end => debug!(?end, "connection closed"),
    }
    drop(permit);
}

async fn relay_inner<S: PeerStream>(
    peer: S,
    addr: PeerAddr,
    connection: u32,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> End {
    let mut server = match connect_upstream(shared, deadline).await {
        Ok(server) => server,
        Err(end) => return end,
    };
    let (mut peer_read, mut peer_write) = peer.halves();
    let (mut server_read, mut server_write) = server.split();
    let pong = PongSlot::default();
    let identity = addr.identity(connection);
    let inbound = inbound(
        &mut peer_read,
        &mut server_write,
        Inspector::new(Origin::Peer, shared.limits, Some(identity)),
        shared.config.buffer_size,
        deadline,
        &pong,
    );
    let outbound = outbound(
        &mut server_read,
        &mut peer_write,
        shared.config.buffer_size,
        &pong,
        &shared.counters.pongs,
    );
    // Either direction ending ends the connection: the peer's last bytes were already written
    // to zmq.rs (and zmq.rs's to the peer) before its reader saw the end.
    tokio::select! {
        end = inbound => end,
        end = outbound => end,
    }
}

/// Connects to zmq.rs's private listener. A full accept queue (`WouldBlock`) is retried until
/// the handshake deadline: zmq.rs drains it quickly, and a burst must not cost good peers.
async fn connect_upstream(
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Result<UnixStream, End> {
    loop {
        match UnixStream::connect(&shared.socket_path).await {
            Ok(stream) => return Ok(stream),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(End::Broken(
                        Rule::HandshakeTimeout,
                        "server did not take the connection".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => return Err(End::Io(error)),
        }
    }
}

/// The latest PING to answer; the outbound direction writes the PONG between frames.
#[derive(Default)]
struct PongSlot {
    context: Mutex<Option<PingContext>>,
    ready: Notify,
}

impl PongSlot {
    fn set(&self, context: PingContext) {
        // A peer that pings faster than the PONGs go out gets one PONG for the latest PING.
        *lock(&self.context) = Some(context);
        self.ready.notify_one();
    }

    fn take(&self) -> Option<PingContext> {
        lock(&self.context).take()
    }
}

/// Bytes read and not yet written: `data[start..end]`. It starts small and doubles, up to its
/// limit, each time a read fills it: an idle or stalled connection holds well under a kilobyte,
/// one that streams gets large reads.
struct Buffer {
    data: Vec<u8>,
    limit: usize,
    start: usize,
    end: usize,
}

/// A new buffer's size: a greeting and a READY fit.
const INITIAL_BUFFER: usize = 512;

impl Buffer {
    fn new(limit: usize) -> Self {
        Self {
            data: Vec::new(),
            limit,
            start: 0,
            end: 0,
        }
    }

    /// Room to read into: what is left moves to the front once the end is reached, and the
    /// buffer grows when that is not enough. Never empty: what an inspector holds back is
    /// smaller than the limit (a header, or a command of at most `MAX_COMMAND` bytes;
    /// [`GuardConfig::validate`] keeps the limit larger).
    fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.data.len() {
                let size = (self.data.len() * 2).clamp(INITIAL_BUFFER, self.limit);
                self.data.resize(size, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// A read of `n` bytes landed in [`Buffer::spare`].
    fn filled(&mut self, n: usize) {
        self.end += n;
        if self.end == self.data.len() && self.data.len() < self.limit {
            // The read filled all there was: the next one may use more.
            let size = (self.data.len() * 2).min(self.limit);
            self.data.resize(size, 0);
        }
    }

    fn unhandled(&self, skip: usize) -> &[u8] {
        &self.data[self.start + skip..self.end]
    }

    fn front(&self, len: usize) -> &[u8] {
        &self.data[self.start..self.start + len]
    }
}

/// Peer to zmq.rs: every rule checked, PINGs answered, READY given an identity.
async fn inbound<R, W>(
    read: &mut R,
    write: &mut W,
    mut inspector: Inspector,
    buffer_size: usize,
    deadline: tokio::time::Instant,
    pong: &PongSlot,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Buffer::new(buffer_size);
    loop {
        let spare = buf.spare();
        if spare.is_empty() {
            return End::Io(io::Error::other("guard buffer full"));
        }
        let read = if inspector.handshake_done() {
            read.read(spare).await
        } else {
            match tokio::time::timeout_at(deadline, read.read(spare)).await {
                Ok(read) => read,
                Err(_) => {
                    return End::Broken(
                        Rule::HandshakeTimeout,
                        "no greeting and READY in time".into(),
                    )
                }
            }
        };
        match read {
            Ok(0) => return End::PeerClosed,
            Ok(n) => buf.filled(n),
            Err(error) => return End::Io(error),
        }
        // `pass`: bytes at the front already judged and to be written as they are.
        let mut pass = 0;
        loop {
            let action = match inspector.next(buf.unhandled(pass)) {
                Ok(Some(action)) => action,
                Ok(None) => break,
                Err(violation) => {
                    // What came before the offending bytes was fine: it goes on, nothing after.
                    let _ = flush(write, &mut buf, &mut pass).await;
                    return violation.into();
                }
            };
            let (consumed, replacement): (usize, &[u8]) = match &action {
                Action::Forward(n) => {
                    pass += n;
                    continue;
                }
                Action::Skip(consumed) => (*consumed, &[]),
                Action::Ping { consumed, context } => {
                    pong.set(*context);
                    (*consumed, &[])
                }
                Action::Rewrite { consumed, ready } => (*consumed, ready),
            };
            if let Err(error) = flush(write, &mut buf, &mut pass).await {
                return End::Io(error);
            }
            buf.start += consumed;
            if !replacement.is_empty() {
                if let Err(error) = write.write_all(replacement).await {
                    return End::Io(error);
                }
            }
        }
        if let Err(error) = flush(write, &mut buf, &mut pass).await {
            return End::Io(error);
        }
    }
}

/// Writes the `pass` judged bytes at the front of `buf` and drops them from it.
async fn flush<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &mut Buffer,
    pass: &mut usize,
) -> io::Result<()> {
    if *pass > 0 {
        write.write_all(buf.front(*pass)).await?;
        buf.start += *pass;
        *pass = 0;
    }
    Ok(())
}

/// zmq.rs to peer: passed through, with a PONG written between frames when one is due.
async fn outbound<R, W>(
    read: &mut R,
    write: &mut W,
    buffer_size: usize,
    pong: &PongSlot,
    pongs: &AtomicU64,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = FrameLimits {
        max_frame: u64::MAX,
        max_message: u64::MAX,
        max_frames: u32::MAX,
    };
    let mut inspector = Inspector::new(Origin::Server, limits, None);
    let mut buf = Buffer::new(buffer_size);
    loop {
        if inspector.between_frames() {
            if let Some(context) = pong.take() {
                let (bytes, len) = context.pong();
                if let Err(error) = write.write_all(&bytes[..len]).await {
                    return End::Io(error);
                }
                pongs.fetch_add(1, Ordering::Relaxed);
            }
        }
        let between_frames = inspector.between_frames();
        let spare = buf.spare();
        if spare.is_empty() {
            return End::Io(io::Error::other("guard buffer full"));
        }
        let read = tokio::select! {
            // read() is cancel-safe: nothing is consumed unless it completes.
            read = read.read(spare) => read,
            // A PING arrived while zmq.rs is quiet: go round and answer it.
            _ = pong.ready.notified(), if between_frames => continue,
        };
        match read {
            Ok(0) => return End::ServerClosed,
            Ok(n) => buf.filled(n),
            Err(error) => return End::Io(error),
        }
        let mut pass = 0;
        while let Ok(Some(Action::Forward(n))) = inspector.next(buf.unhandled(pass)) {
            pass += n;
        }
        if let Err(error) = flush(write, &mut buf, &mut pass).await {
            return End::Io(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_are_0700_removed_when_dropped_and_stale_ones_swept() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("zmtp-guard-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // Left by a process that no longer runs (no pid is this large), and one of a live one.
        let stale = base.join(format!("{PRIVATE_PREFIX}999999999-0-0"));
        let live = base.join(format!("{PRIVATE_PREFIX}1-0-0"));
        std::fs::create_dir_all(stale.join("inner")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        let dir = PrivateDir::create_in(&base).unwrap();
        let mode = std::fs::metadata(&dir.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!stale.exists(), "the stale directory is swept");
        assert!(live.exists(), "pid 1 runs: its directory stays");
        let path = dir.0.clone();
        drop(dir);
        assert!(!path.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
