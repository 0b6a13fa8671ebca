//! Free endpoints on this machine, for servers started on the fly.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A loopback port that was free a moment ago, for a server that binds it later.
///
/// The port lies below the kernel's ephemeral range (`ip_local_port_range`), where the kernel
/// never picks a connection's local port. A port from that range could be taken, between the
/// pick and the bind, by any process's outgoing connection, and a connection to it while it is
/// unbound could be given it as its own local port and connect to itself. Processes take ports
/// in turn, through a counter in a locked file in the temporary directory, so that two tests
/// running at once do not pick the same one; a port is handed out again only after every other
/// port of the gap. Where the gap is too small or the counter cannot be used, the kernel picks.
pub fn free_tcp_port() -> Result<u16> {
    let Some(highest) = ephemeral_start()
        .and_then(|start| start.checked_sub(1))
        .filter(|highest| *highest >= LOWEST_PORT + FEWEST_PORTS)
    else {
        return kernel_port();
    };
    let span = u32::from(highest - LOWEST_PORT) + 1;
    for _ in 0..TRIES {
        let Some(turn) = next_turn() else {
            return kernel_port();
        };
        let port = LOWEST_PORT + (turn % span) as u16;
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

/// The first port of the kernel's ephemeral range, where it says.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The next turn of the counter every process shares, or `None` where the file cannot be used.
/// The file starts at a number taken from the clock, so that runs on a machine whose temporary
/// directory is fresh do not all begin with the same ports.
fn next_turn() -> Option<u32> {
    use std::io::{Read, Seek, Write};
    let path = std::env::temp_dir().join("majordomo-free-tcp-port");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ok()?;
    file.lock().ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let turn = text.trim().parse::<u32>().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos())
    });
    file.rewind().ok()?;
    file.set_len(0).ok()?;
    write!(file, "{}", turn.wrapping_add(1)).ok()?;
    Some(turn)
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
    fn tcp_ports_lie_below_the_ephemeral_range_and_follow_each_other() -> Result<()> {
        let Some(start) = ephemeral_start() else {
            return Ok(());
        };
        if start < LOWEST_PORT + FEWEST_PORTS + 1 {
            return Ok(());
        }
        let ports = (0..8)
            .map(|_| free_tcp_port())
            .collect::<Result<Vec<_>>>()?;
        for port in &ports {
            assert!((LOWEST_PORT..start).contains(port), "{port} of {ports:?}");
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
