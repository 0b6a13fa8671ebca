//! What the commands that connect to a broker share: its endpoint and the MDP they speak.

use clap::Args;
use majordomo_client::{Dialect, Version};

/// The broker's endpoint when none is given.
pub(crate) const DEFAULT_ENDPOINT: &str = "tcp://127.0.0.1:5555";

/// Where the brokers are.
#[derive(Args, Clone)]
pub(crate) struct ConnectArgs {
    /// Broker endpoint; repeat it for several brokers serving the same services (a worker
    /// registers with every one; a client sends each attempt to the next in turn).
    // Global, so that `worker echo --connect EP` works as `worker --connect EP echo` does.
    #[arg(long, default_value = DEFAULT_ENDPOINT, global = true, action = clap::ArgAction::Append)]
    pub(crate) connect: Vec<String>,
}

/// The MDP a client or worker speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mdp {
    /// 7/MDP (MDP v0.1).
    #[value(name = "0.1")]
    V01,
    /// 18/MDP (MDP v0.2) as RFC 18 writes it.
    #[value(name = "0.2")]
    V02,
    /// 18/MDP as majortomo speaks it (a leading empty frame; what majortomo's broker needs).
    #[value(name = "0.2-majortomo")]
    V02Majortomo,
}

impl From<Mdp> for Version {
    fn from(mdp: Mdp) -> Self {
        match mdp {
            Mdp::V01 => Version::V01,
            Mdp::V02 => Version::V02(Dialect::Rfc18),
            Mdp::V02Majortomo => Version::V02(Dialect::Majortomo),
        }
    }
}
