//! What every server command (broker, ppqueue, spqueue) takes besides its own options: the
//! metrics listener, the ZMTP guard, and where the configuration comes from (see
//! [`crate::config`]; `worker` and `titanic` take that too).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use majordomo_broker::{
    ClientFilter, CurveKeyPair, CurvePublicKey, CurveSecurity, GuardConfig, GuardStatsHandle,
};

/// What every server command takes besides its own options.
#[derive(Args, Clone)]
pub(crate) struct ServerArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics and a health probe at /healthz (200 while
    /// the server's loop turns, 503 while the broker drains or the loop stalls), e.g.
    /// 127.0.0.1:9464. Off by default.
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) guard: GuardArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Where a server command's configuration comes from.
#[derive(Args, Clone)]
pub(crate) struct ConfigArgs {
    /// Read options from this TOML file's table of the command: `[broker]`, `[ppqueue]`,
    /// `[spqueue]`, `[worker]` or `[titanic]` (keys are the long option names: `heartbeat =
    /// "1s"`, `bind = ["tcp://0.0.0.0:5555"]`). A flag beats an environment variable
    /// (`MAJORDOMO_<COMMAND>_<OPTION>`, e.g. `MAJORDOMO_BROKER_HEARTBEAT=1s`), which beats the
    /// file, which beats the default. deploy/majordomo.toml is a sample.
    // Global, so that `worker echo --config F` works as `worker --config F echo` does.
    #[arg(long, env = "MAJORDOMO_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// Print the configuration in force, as TOML, and exit.
    #[arg(long, global = true)]
    print_config: bool,
}

/// The ZMTP guard's options, shared by every server command.
#[derive(Args, Clone)]
#[command(next_help_heading = "ZMTP guard (tcp:// endpoints)")]
pub(crate) struct GuardArgs {
    /// Bind tcp:// endpoints without the ZMTP guard, for trusted networks only: zmq.rs then faces
    /// peers directly, and a peer announcing a huge frame aborts the process.
    #[arg(long)]
    no_guard: bool,
    /// Largest frame a peer may send, e.g. 16MiB (default: the largest message).
    #[arg(long)]
    guard_max_frame: Option<bytesize::ByteSize>,
    /// Largest message a peer may send, all frames summed (default: --max-message-size for the
    /// broker, 16MiB for the queues).
    #[arg(long)]
    guard_max_message: Option<bytesize::ByteSize>,
    /// Most frames in one message.
    #[arg(long, default_value_t = 1024)]
    guard_max_frames: u32,
    /// How long a new connection has to complete its ZMTP greeting and handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    guard_handshake_timeout: Duration,
    /// Most connections open at once per endpoint (each takes three file descriptors).
    #[arg(long, default_value_t = 4096)]
    guard_max_connections: usize,
    /// Most connections open at once from one IP address.
    #[arg(long, default_value_t = 512)]
    guard_max_connections_per_address: usize,
    /// New connections accepted per second from one IP address (bursts of twice as many).
    #[arg(long, default_value_t = 1000)]
    guard_connection_rate: u32,
    /// Accept connections only from this network (CIDR, e.g. 10.0.0.0/8 or 192.168.1.7/32, or
    /// one address); repeat it for several. Others are closed at once, counted under the
    /// guard rule `network`. Default: any address.
    #[arg(long, value_parser = parse_network, action = clap::ArgAction::Append)]
    guard_allow_from: Vec<ipnet::IpNet>,
    /// Connections the kernel queues before the guard accepts them (the listen backlog; the
    /// kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 1024)]
    listen_backlog: u32,
    /// Relay each peer to its own zmq.rs connection instead of the front end: the guard still
    /// checks greetings, frames and limits, but the budgets below do not apply, and zmq.rs holds
    /// up to 100,000 queued messages per peer, whatever their size. For comparison only.
    #[arg(long)]
    guard_relay: bool,
    /// Bytes of messages read from peers and not yet passed to the server, all peers of an
    /// endpoint together; at the limit peers are not read until some is passed on.
    #[arg(long, default_value = "256MiB")]
    guard_inbound_budget: bytesize::ByteSize,
    /// Bytes of replies queued for one peer that does not read them; past it the peer is closed
    /// and its queued replies counted as dropped.
    #[arg(long, default_value = "32MiB")]
    guard_outbound_budget: bytesize::ByteSize,
    /// How long a message may take to arrive whole once it has begun; past it the peer is closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    guard_message_timeout: Duration,
    /// How long a peer in the middle of a message may go without sending 64 KiB more of it, or
    /// its end, while other peers wait for the inbound budget; past it the peer is closed and its
    /// bytes go to them.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    guard_stall_timeout: Duration,
    /// Serve CURVE (RFC 26) with the key pair in this czmq certificate (`majordomo keygen NAME`
    /// writes one: give NAME_secret). Peers must then connect with CURVE and this server's
    /// public key; traffic is encrypted and each client's key is known. Turns the front end on.
    #[arg(long, help_heading = "CURVE security (tcp:// endpoints)")]
    curve_secret_key_file: Option<PathBuf>,
    /// Client keys let in: a directory of czmq certificates (each file's public-key, as czmq's
    /// zauth reads them) or a file of Z85 public keys, one per line. Reloaded on SIGHUP without
    /// dropping connections. Default: any client key (traffic still encrypted).
    #[arg(long, help_heading = "CURVE security (tcp:// endpoints)")]
    curve_clients: Option<PathBuf>,
    /// Serve peers without CURVE (NULL mechanism) too, on the same endpoints: unencrypted, with
    /// no client key. Off by default: a CURVE server refuses NULL peers.
    #[arg(long, help_heading = "CURVE security (tcp:// endpoints)")]
    curve_allow_null: bool,
}

impl GuardArgs {
    /// The guard's configuration, or `None` with --no-guard; `max_message` is the server's own
    /// message limit, the default for the guard's.
    pub(crate) fn config(&self, max_message: u64) -> Result<Option<GuardConfig>> {
        if self.no_guard {
            if self.curve_secret_key_file.is_some() {
                bail!("--curve-secret-key-file needs the guard: drop --no-guard");
            }
            return Ok(None);
        }
        let max_message = self
            .guard_max_message
            .map_or(max_message, |size| size.as_u64());
        let max_frame = self
            .guard_max_frame
            .map_or(max_message, |size| size.as_u64());
        let config = GuardConfig::default()
            .max_frame_size(max_frame)
            .max_message_size(max_message)
            .max_frames(self.guard_max_frames)
            .handshake_timeout(self.guard_handshake_timeout)
            .max_connections(self.guard_max_connections)
            .max_connections_per_address(self.guard_max_connections_per_address)
            .connection_rate(self.guard_connection_rate)
            .listen_backlog(self.listen_backlog)
            .front_end(!self.guard_relay)
            .inbound_budget(bytes(self.guard_inbound_budget))
            .outbound_budget(bytes(self.guard_outbound_budget))
            .message_timeout(self.guard_message_timeout)
            .stall_timeout(self.guard_stall_timeout)
            .allow_from(self.guard_allow_from.iter().copied())
            // One inbound budget for every endpoint (and both sockets of a queue).
            .shared_inbound_budget();
        let Some(path) = &self.curve_secret_key_file else {
            if self.curve_clients.is_some() || self.curve_allow_null {
                bail!("--curve-clients and --curve-allow-null need --curve-secret-key-file");
            }
            return Ok(Some(config));
        };
        let keys = CurveKeyPair::load(path)?;
        tracing::info!(public_key = %keys.public(), "CURVE on");
        let clients = match &self.curve_clients {
            None => ClientFilter::new(None),
            Some(path) => {
                let filter = ClientFilter::new(Some(load_client_keys(path)?));
                let (reloaded, path) = (filter.clone(), path.clone());
                crate::signals::on_reload(move || {
                    let keys = load_client_keys(&path)?;
                    tracing::info!(keys = keys.len(), path = %path.display(), "CURVE client keys reloaded");
                    reloaded.set(Some(keys));
                    Ok(())
                });
                filter
            }
        };
        Ok(Some(config.curve(CurveSecurity {
            keys: Arc::new(keys),
            clients,
            allow_null: self.curve_allow_null,
        })))
    }
}

/// The client keys in `path`: every certificate's public-key in a directory, or one Z85 key per
/// line of a file (blank lines and lines starting with `#` skipped).
fn load_client_keys(path: &Path) -> Result<HashSet<CurvePublicKey>> {
    let mut keys = HashSet::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).with_context(|| format!("{}", path.display()))?;
        for entry in entries {
            let file = entry?.path();
            if file.is_file() {
                keys.insert(CurvePublicKey::load(&file)?);
            }
        }
        return Ok(keys);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = CurvePublicKey::from_z85(line)
            .with_context(|| format!("{}, line {}", path.display(), n + 1))?;
        keys.insert(key);
    }
    Ok(keys)
}

/// A network in CIDR notation, or one address (a network of that address alone).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a network (10.0.0.0/8) or an address"))
}

/// `size` in bytes, saturated to what the platform can count.
fn bytes(size: bytesize::ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

/// Logs what each guard did, when a server stops.
pub(crate) fn log_guards(guards: &[GuardStatsHandle]) {
    for guard in guards {
        let stats = guard.stats();
        let refused: Vec<String> = stats
            .by_rule()
            .filter(|(_, n)| *n > 0)
            .map(|(rule, n)| format!("{rule}={n}"))
            .collect();
        tracing::info!(
            accepted = stats.accepted,
            pongs = stats.pongs,
            dropped = stats.dropped,
            refused = %refused.join(","),
            "guard stopped"
        );
    }
}
