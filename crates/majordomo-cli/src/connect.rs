//! What the commands that connect to a broker share: its endpoint and the MDP they speak.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use majordomo_broker::{CurveKeyPair, CurvePublicKey};
use majordomo_client::{Dialect, Version};
use majordomo_rt::transport::DealerConnector;

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
    #[command(flatten)]
    pub(crate) curve: CurveArgs,
}

/// CURVE towards the brokers.
#[derive(Args, Clone)]
#[command(next_help_heading = "CURVE security")]
pub(crate) struct CurveArgs {
    /// Connect with CURVE to brokers with this public key (Z85, 40 characters; `majordomo
    /// keygen` prints it and writes it to NAME). Every --connect endpoint must be tcp://.
    // Z85's alphabet has `-`: a key may begin with it and is still this option's value.
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub(crate) curve_server_key: Option<String>,
    /// This client's or worker's own key pair: a czmq certificate with both keys (the
    /// NAME_secret that `majordomo keygen NAME` writes). Default: a pair made for this run,
    /// which a broker that lists client keys refuses.
    #[arg(long, global = true)]
    pub(crate) curve_key_file: Option<PathBuf>,
}

impl CurveArgs {
    /// The server key and our own pair, when CURVE is asked for.
    pub(crate) fn keys(&self) -> Result<Option<(CurvePublicKey, Arc<CurveKeyPair>)>> {
        let Some(server) = &self.curve_server_key else {
            anyhow::ensure!(
                self.curve_key_file.is_none(),
                "--curve-key-file needs --curve-server-key"
            );
            return Ok(None);
        };
        let server = CurvePublicKey::from_z85(server).context("--curve-server-key")?;
        let keys = match &self.curve_key_file {
            Some(path) => CurveKeyPair::load(path)?,
            None => CurveKeyPair::generate(),
        };
        Ok(Some((server, Arc::new(keys))))
    }
}

impl ConnectArgs {
    /// The --connect endpoints, each checked to be one.
    pub(crate) fn endpoints(&self) -> Result<Vec<String>> {
        for endpoint in &self.connect {
            majordomo_rt::transport::check_endpoint(endpoint)?;
        }
        Ok(self.connect.clone())
    }

    /// One connector per --connect endpoint, with CURVE if asked for.
    pub(crate) fn connectors(&self) -> Result<Vec<DealerConnector>> {
        self.curve.connectors(&self.connect)
    }
}

impl CurveArgs {
    /// A connector for each of `endpoints`, with CURVE if asked for.
    pub(crate) fn connectors(&self, endpoints: &[String]) -> Result<Vec<DealerConnector>> {
        for endpoint in endpoints {
            majordomo_rt::transport::check_endpoint(endpoint)?;
        }
        let Some((server, keys)) = self.keys()? else {
            return Ok(endpoints.iter().map(DealerConnector::from).collect());
        };
        endpoints
            .iter()
            .map(|ep| Ok(DealerConnector::curve(ep.clone(), server, keys.clone())?))
            .collect()
    }
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
