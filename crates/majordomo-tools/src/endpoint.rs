//! Free endpoints on this machine, for servers started on the fly.

use std::fmt;
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
}
