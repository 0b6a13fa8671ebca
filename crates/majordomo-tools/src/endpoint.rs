//! Free endpoints on this machine, for servers started on the fly.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;

/// A transport a ZeroMQ endpoint can use here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Transport {
    /// TCP on the loopback interface (`tcp://127.0.0.1:PORT`).
    Tcp,
    /// Unix domain sockets (`ipc://PATH`).
    Ipc,
}

impl Transport {
    /// The transport's name as an endpoint's scheme spells it: `tcp` or `ipc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ipc => "ipc",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint nothing uses: for TCP a loopback port that was free a moment ago (see
/// [`free_tcp_port`]), for ipc a fresh socket path in the temporary directory, unique to this
/// process.
pub fn free_endpoint(transport: Transport) -> Result<String> {
    match transport {
        Transport::Tcp => Ok(format!("tcp://127.0.0.1:{}", free_tcp_port()?)),
        Transport::Ipc => {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "majordomo-{}-{}.sock",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            Ok(format!("ipc://{}", path.display()))
        }
    }
}

/// The lowest port [`free_tcp_port`] hands out.
const LOWEST_PORT: u16 = 10_000;

/// Fewest ports between [`LOWEST_PORT`] and the kernel's ephemeral range for
/// [`free_tcp_port`] to use that gap; with fewer, it takes the kernel's pick.
const FEWEST_PORTS: u16 = 1_000;

/// How many taken ports [`free_tcp_port`] skips before it gives up.
const TRIES: u16 = 256;

/// How long [`free_tcp_port`] waits for the counter's lock before the kernel picks.
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// A loopback port that was free a moment ago, for a server that binds it later.
///
/// The port lies from 10000 to just below the kernel's ephemeral range
/// (`ip_local_port_range`), outside which the kernel never picks a connection's local port. A
/// port from the range could be taken, between the pick and the bind, by any process's
/// outgoing connection, and a connection to it while it is unbound could be given it as its
/// own local port and connect to itself. A user's processes take ports in turn, through a
/// counter in a locked file in a directory of the user's own in the temporary directory, so
/// that two tests running at once do not pick the same one; a port comes round again after all
/// the others of the gap.
///
/// The kernel picks instead where the range is not known (`/proc` says it on Linux), where the
/// gap is under 1,000 ports, where the directory is not the user's alone, and where the lock is
/// not had within a second.
pub fn free_tcp_port() -> Result<u16> {
    let Some(span) = gap() else {
        return kernel_port();
    };
    for _ in 0..TRIES {
        let Some(offset) = next_turn(span) else {
            return kernel_port();
        };
        let port = LOWEST_PORT + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    kernel_port()
}

/// A port the kernel picks from its ephemeral range.
fn kernel_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How many ports lie from [`LOWEST_PORT`] up to the kernel's ephemeral range, if enough.
fn gap() -> Option<u16> {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    start
        .checked_sub(LOWEST_PORT)
        .filter(|span| *span >= FEWEST_PORTS)
}

/// Width of the counter in its file: every write is the same five digits, in one call.
const COUNTER_WIDTH: usize = 5;

/// The next turn, below `span`, of the counter the user's processes share, or `None` where it
/// cannot be used. A counter not yet written starts at a number taken from the clock, so that
/// runs on a machine whose temporary directory is fresh do not all begin with the same ports.
fn next_turn(span: u16) -> Option<u16> {
    use std::io::{Read, Seek, Write};
    // Threads of one process take turns here as well: where the file system emulates `flock`
    // with record locks (NFS), those do not exclude threads of one process.
    static TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(counter_dir()?.join("next-port"))
        .ok()?;
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).ok()?;
    // Anything else than a turn of this gap starts the counter again.
    let turn = std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .filter(|turn| *turn < span)
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos());
            (nanos % u32::from(span)) as u16
        });
    let next = format!("{:0width$}", (turn + 1) % span, width = COUNTER_WIDTH);
    file.rewind().ok()?;
    file.write_all(next.as_bytes()).ok()?;
    file.set_len(COUNTER_WIDTH as u64).ok()?;
    Some(turn)
}

/// The user's own directory for the port counter, made if missing: a directory of another
/// user, or one others may write to (where they could plant a link in place of the file), is
/// not used.
#[cfg(unix)]
fn counter_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let dir = std::env::temp_dir().join(format!("majordomo-ports-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    private.then_some(dir)
}

/// No counter where the directory cannot be checked as the user's own.
#[cfg(not(unix))]
fn counter_dir() -> Option<PathBuf> {
    None
}

/// The socket file of an `ipc://` endpoint, removed when dropped: a server stopped by SIGKILL
/// (as [`crate::child::Child`] stops its process) leaves it behind. Declared before the server's
/// process, it is dropped after it. Holds nothing for other transports.
#[must_use = "the file is removed when this is dropped"]
pub struct SocketFile(Option<PathBuf>);

impl SocketFile {
    /// The socket file of `endpoint`, if it has one.
    pub fn of(endpoint: &str) -> Self {
        Self(endpoint.strip_prefix("ipc://").map(PathBuf::from))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_endpoints_name_a_loopback_port() -> Result<()> {
        let endpoint = free_endpoint(Transport::Tcp)?;
        let port: u16 = endpoint
            .strip_prefix("tcp://127.0.0.1:")
            .expect("loopback")
            .parse()?;
        assert_ne!(port, 0);
        Ok(())
    }

    #[test]
    fn tcp_ports_from_threads_at_once_lie_below_the_ephemeral_range_and_differ() -> Result<()> {
        let Some(span) = gap() else {
            // Not Linux, or no room below the range: the kernel picks.
            return Ok(());
        };
        assert!(
            next_turn(span).is_some(),
            "the counter cannot be used: {:?}",
            counter_dir()
        );
        // Each thread opens the counter's file itself, so that their locks contend.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..16).map(|_| free_tcp_port()).collect::<Result<Vec<_>>>())
            })
            .collect();
        let mut ports = Vec::new();
        for thread in threads {
            ports.extend(thread.join().expect("no panic")?);
        }
        for port in &ports {
            assert!(
                (LOWEST_PORT..LOWEST_PORT + span).contains(port),
                "{port} of {ports:?}"
            );
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        Ok(())
    }

    #[test]
    fn ipc_endpoints_are_fresh_paths() -> Result<()> {
        let first = free_endpoint(Transport::Ipc)?;
        let second = free_endpoint(Transport::Ipc)?;
        assert!(first.starts_with("ipc://"), "{first}");
        assert_ne!(first, second);
        assert!(!std::path::Path::new(first.trim_start_matches("ipc://")).exists());
        Ok(())
    }

    #[test]
    fn a_socket_file_goes_with_its_guard_and_tcp_has_none() -> Result<()> {
        let endpoint = free_endpoint(Transport::Ipc)?;
        let path = std::path::PathBuf::from(endpoint.trim_start_matches("ipc://"));
        let file = SocketFile::of(&endpoint);
        // What a server killed by a signal leaves.
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        drop(listener);
        assert!(path.exists());
        drop(file);
        assert!(!path.exists());
        assert!(SocketFile::of(&free_endpoint(Transport::Tcp)?).0.is_none());
        Ok(())
    }
}
