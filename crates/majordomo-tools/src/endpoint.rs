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

/// An endpoint nothing uses: for TCP a loopback port that was free a moment ago (another process
/// may take it before it is bound), for ipc a fresh socket path in the temporary directory,
/// unique to this process.
pub fn free_endpoint(transport: Transport) -> Result<String> {
    match transport {
        Transport::Tcp => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            Ok(format!("tcp://127.0.0.1:{port}"))
        }
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
