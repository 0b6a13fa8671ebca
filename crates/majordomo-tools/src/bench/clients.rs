//! The `client-pool` and `client-mux` runs: the same load as `broker`, made through the client
//! library instead of raw DEALER sockets, once with [`Client`] (one connection per request in
//! flight) and once with [`MuxClient`] (every request tagged on one connection). The figures of
//! CPU and memory are this process's, where the clients run: what a caller pays per request.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use majordomo_client::{Client, ClientConfig, MuxClient};
use majordomo_freelance::{FreelanceClient, FreelanceConfig};

use super::load::{ClientResult, DRAIN, MEASURE};

/// The library client a run drives: clones share one pool, or one tagged connection.
#[derive(Clone)]
pub(super) enum Library {
    /// Connection per request in flight.
    Pool(Client),
    /// One connection, tagged requests.
    Mux(MuxClient),
    /// Freelance (10/FLP): no broker, straight to the servers.
    Freelance(FreelanceClient),
}

impl Library {
    /// A client of the kind asked for, for the broker at `endpoint`.
    pub(super) fn new(mux: bool, endpoint: &str) -> Self {
        let config = ClientConfig::default();
        if mux {
            Self::Mux(MuxClient::new(endpoint, config))
        } else {
            Self::Pool(Client::new(endpoint, config))
        }
    }

    /// A Freelance client of the servers at `endpoints`, with the Freelance defaults.
    pub(super) fn freelance(endpoints: &[String]) -> anyhow::Result<Self> {
        Ok(Self::Freelance(FreelanceClient::new(
            endpoints.to_vec(),
            FreelanceConfig::default(),
        )?))
    }

    async fn request(&self, body: Bytes) -> Result<Vec<Bytes>, String> {
        match self {
            Self::Pool(client) => client
                .request("echo", vec![body])
                .await
                .map_err(|e| e.to_string()),
            Self::Mux(client) => client
                .request("echo", vec![body])
                .await
                .map_err(|e| e.to_string()),
            Self::Freelance(client) => client.request(vec![body]).await.map_err(|e| e.to_string()),
        }
    }
}

/// One caller: a task making one request after another until the run drains, checking that each
/// reply is its own request's body.
pub(super) async fn caller(
    library: Library,
    id: u64,
    size: usize,
    phase: Arc<AtomicU8>,
) -> ClientResult {
    let mut result = ClientResult::default();
    let size = size.max(16);
    let filler: Bytes = (0..size - 16)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect::<Vec<u8>>()
        .into();
    let mut seq = 0u64;
    while phase.load(Ordering::Relaxed) != DRAIN {
        let mut body = BytesMut::with_capacity(size);
        body.put_u64(id);
        body.put_u64(seq);
        body.extend_from_slice(&filler);
        let body = body.freeze();
        let sent = Instant::now();
        match library.request(body.clone()).await {
            Ok(reply) if reply.len() == 1 && reply[0] == body => {}
            Ok(reply) => {
                result.errors.push(format!(
                    "caller {id}: reply {:?} is not its request's body",
                    reply.iter().map(|f| f.len()).collect::<Vec<_>>()
                ));
                break;
            }
            Err(e) => {
                result.errors.push(format!("caller {id}: {e}"));
                break;
            }
        }
        // Counted as the raw clients count: replies that arrive while the run is measured.
        if phase.load(Ordering::Relaxed) == MEASURE {
            result
                .latencies_us
                .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            result.measured += 1;
        }
        seq += 1;
    }
    result
}
