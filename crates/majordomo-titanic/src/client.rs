//! A 9/TSP client: store a request with Titanic, fetch its reply later, close it.

use std::time::Duration;

use bytes::Bytes;
use majordomo_client::{Client, ClientConfig, ClientError};
use majordomo_rt::round_robin::RoundRobin;
use majordomo_rt::transport::{Connector, DealerConnector};

use crate::tsp::{self, Status, Uuid};

/// Why a Titanic call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TitanicClientError {
    /// The broker or Titanic did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Titanic answered 400 (an unknown UUID) or 500 (it could not do it; retry later).
    #[error("titanic answered {}", .0.code())]
    Status(Status),
    /// The answer is not 9/TSP.
    #[error("malformed answer from titanic: {0}")]
    Malformed(&'static str),
    /// [`TitanicClient::wait`] saw no reply before its deadline; the request stays stored.
    #[error("no reply to {0} in time; it is still pending")]
    Pending(Uuid),
}

/// A client of a Titanic server through a 7/MDP broker. Clone it freely: clones share one
/// [`Client`]'s connections.
///
/// [`TitanicClient::new`] connects zmq.rs DEALER sockets to the broker's endpoint;
/// [`TitanicClient::with_connector`] connects through any [`Connector`] (for example the
/// in-memory sockets of `majordomo_rt::memory`).
pub struct TitanicClient<C: Connector = DealerConnector> {
    client: Client<C>,
}

impl<C: Connector> Clone for TitanicClient<C> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
        }
    }
}

impl<C: Connector> std::fmt::Debug for TitanicClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TitanicClient")
            .field("client", &self.client)
            .finish()
    }
}

/// Splits a TSP answer into its status and content.
fn status(frames: Vec<Bytes>) -> Result<(Status, Vec<Bytes>), TitanicClientError> {
    let mut frames = frames.into_iter();
    let first = frames
        .next()
        .ok_or(TitanicClientError::Malformed("no status frame"))?;
    let status = Status::parse(&first).ok_or(TitanicClientError::Malformed("bad status frame"))?;
    Ok((status, frames.collect()))
}

impl TitanicClient {
    /// A client of the broker at `endpoint`; `config` sets each call's timeout and attempts.
    pub fn new(endpoint: impl Into<DealerConnector>, config: ClientConfig) -> Self {
        Self {
            client: Client::new(endpoint, config),
        }
    }
}

impl TitanicClient<RoundRobin<DealerConnector>> {
    /// A client of several brokers in front of the same Titanic: each attempt connects to the
    /// next broker in turn ([`RoundRobin`]), so a call that timed out on one is retried on
    /// another.
    ///
    /// # Panics
    ///
    /// If `endpoints` is empty.
    pub fn with_endpoints<E: Into<DealerConnector>>(
        endpoints: impl IntoIterator<Item = E>,
        config: ClientConfig,
    ) -> Self {
        Self {
            client: Client::with_endpoints(endpoints, config),
        }
    }
}

impl<C: Connector> TitanicClient<C> {
    /// A client that opens its connections to the broker through `connector`; `config` sets
    /// each call's timeout and attempts.
    pub fn with_connector(connector: C, config: ClientConfig) -> Self {
        Self {
            client: Client::with_connector(connector, config),
        }
    }

    /// Stores `body` for `service` with Titanic; its UUID once it is durable.
    ///
    /// Cancel-safe as [`Client::request`] is, with one consequence: a submit whose future is
    /// dropped may still have stored the request, whose UUID the caller then never learns (it
    /// runs, and its reply stays until the retention time).
    pub async fn submit(
        &self,
        service: impl Into<Bytes>,
        body: Vec<Bytes>,
    ) -> Result<Uuid, TitanicClientError> {
        let mut frames = Vec::with_capacity(body.len() + 1);
        frames.push(service.into());
        frames.extend(body);
        let answer = self.client.request(tsp::REQUEST_SERVICE, frames).await?;
        match status(answer)? {
            (Status::Ok, content) => content
                .first()
                .and_then(|f| Uuid::parse(f))
                .ok_or(TitanicClientError::Malformed("no UUID after 200")),
            (other, _) => Err(TitanicClientError::Status(other)),
        }
    }

    /// Asks once for the reply of `uuid`: `Some(body)` when it is there, `None` while pending.
    /// Cancel-safe: it only reads; dropping the future loses nothing.
    pub async fn reply(&self, uuid: Uuid) -> Result<Option<Vec<Bytes>>, TitanicClientError> {
        let answer = self
            .client
            .request(tsp::REPLY_SERVICE, vec![uuid.frame()])
            .await?;
        match status(answer)? {
            (Status::Ok, body) => Ok(Some(body)),
            (Status::Pending, _) => Ok(None),
            (other, _) => Err(TitanicClientError::Status(other)),
        }
    }

    /// Polls for the reply of `uuid` every `every` until it is there, for at most `patience`.
    /// Cancel-safe, as [`TitanicClient::reply`] is.
    pub async fn wait(
        &self,
        uuid: Uuid,
        patience: Duration,
        every: Duration,
    ) -> Result<Vec<Bytes>, TitanicClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(body) = self.reply(uuid).await? {
                return Ok(body);
            }
            if tokio::time::Instant::now() + every > deadline {
                return Err(TitanicClientError::Pending(uuid));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Tells Titanic the reply of `uuid` is no longer needed (fine for an unknown UUID).
    /// Cancel-safe in effect: a close whose future is dropped may or may not have happened,
    /// and closing again is harmless.
    pub async fn close(&self, uuid: Uuid) -> Result<(), TitanicClientError> {
        let answer = self
            .client
            .request(tsp::CLOSE_SERVICE, vec![uuid.frame()])
            .await?;
        match status(answer)? {
            (Status::Ok, _) => Ok(()),
            (other, _) => Err(TitanicClientError::Status(other)),
        }
    }
}
