//! The Lazy Pirate client: a [`Call::lazy_pirate`] driven by `majordomo_rt::call`, over zmq.rs
//! DEALER sockets or any other [`Connector`]'s connections.

use std::time::Duration;

use bytes::Bytes;
use majordomo_proto::client::{Call, CallEvent};
use majordomo_rt::call::CallLink;
use majordomo_rt::clock;
use majordomo_rt::transport::{Connector, DealerConnector};
use tracing::{info_span, Instrument};

/// Timeout and attempts of a [`LazyPirate`] client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LazyPirateConfig {
    /// How long to wait for each reply (default 2500 ms, the Guide's `REQUEST_TIMEOUT`).
    pub timeout: Duration,
    /// Attempts in all before giving up (default 3, the Guide's `REQUEST_RETRIES`). Zero is
    /// treated as one.
    pub attempts: u32,
}

impl LazyPirateConfig {
    /// Sets `timeout`; the field says what it means and its default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets `attempts`; the field says what it means and its default.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

impl Default for LazyPirateConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(2500),
            attempts: 3,
        }
    }
}

/// Why a Lazy Pirate request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LazyPirateError {
    /// No acceptable reply after every attempt: "server seems to be offline". The request is
    /// handed back.
    #[error("server seems to be offline, abandoning after {attempts} attempts")]
    ServerOffline {
        /// Attempts made.
        attempts: u32,
        /// The request frames.
        request: Vec<Bytes>,
    },
}

/// What a [`LazyPirate`] client is doing, for callers that report progress (the Guide's
/// `lpclient` prints each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyEvent {
    /// No reply within the timeout; the socket is closed and the request will be resent on a new
    /// one (attempt `next` of `of`).
    Retrying {
        /// The attempt about to be made, from 2.
        next: u32,
        /// Attempts in all.
        of: u32,
    },
    /// A reply arrived that the caller's check rejected (for example a stale sequence number);
    /// the client keeps waiting for the right one.
    Rejected(Vec<Bytes>),
}

/// A Lazy Pirate client for one REQ/REP server, used one request at a time.
///
/// It speaks exactly what a REQ socket puts on the wire (an empty delimiter, then the request), so
/// any REP or ROUTER server serves it. The socket is kept between successful requests and
/// replaced after every timeout: "Socket is confused. Close and remove it."
pub struct LazyPirate<C: Connector = DealerConnector> {
    connector: C,
    /// Where the connector connects, for logs.
    endpoint: String,
    config: LazyPirateConfig,
    link: CallLink<C::Conn>,
    observer: Option<Box<dyn FnMut(LazyEvent) + Send>>,
}

impl<C: Connector> std::fmt::Debug for LazyPirate<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPirate")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LazyPirate {
    /// A client for the server at `endpoint`; nothing connects before the first request.
    pub fn new(endpoint: impl Into<DealerConnector>, config: LazyPirateConfig) -> Self {
        Self::with_connector(endpoint.into(), config)
    }
}

impl<C: Connector> LazyPirate<C> {
    /// A client that opens its connections through `connector` (for example the in-memory
    /// sockets of `majordomo_rt::memory`); nothing connects before the first request.
    pub fn with_connector(connector: C, config: LazyPirateConfig) -> Self {
        Self {
            endpoint: connector.describe(),
            connector,
            config,
            link: CallLink::new(),
            observer: None,
        }
    }

    /// Calls `observer` with each [`LazyEvent`].
    pub fn on_event(mut self, observer: impl FnMut(LazyEvent) + Send + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Sends `request` and returns the first reply.
    ///
    /// Cancel-safe as [`LazyPirate::request_with`] is.
    pub async fn request(&mut self, request: Vec<Bytes>) -> Result<Vec<Bytes>, LazyPirateError> {
        self.request_with(request, |_| true).await
    }

    /// Sends `request` and returns the first reply that `accept` approves; other replies are
    /// reported as [`LazyEvent::Rejected`] and skipped within the same timeout.
    ///
    /// The attempts and timeouts are those of [`majordomo_proto::client::Call::lazy_pirate`],
    /// driven by `majordomo_rt::call`.
    ///
    /// Cancel-safe: dropping the future closes the request's connection, so its reply, if one
    /// comes, reaches no later request; the request may still have run.
    pub async fn request_with(
        &mut self,
        request: Vec<Bytes>,
        accept: impl FnMut(&[Bytes]) -> bool,
    ) -> Result<Vec<Bytes>, LazyPirateError> {
        let span = info_span!("lazy_pirate", endpoint = %self.endpoint);
        self.call(request, accept).instrument(span).await
    }

    async fn call(
        &mut self,
        request: Vec<Bytes>,
        mut accept: impl FnMut(&[Bytes]) -> bool,
    ) -> Result<Vec<Bytes>, LazyPirateError> {
        let (timeout, attempts) = (self.config.timeout, self.config.attempts);
        let mut call = Call::lazy_pirate(clock::now(), request, timeout, attempts);
        loop {
            let observer = &mut self.observer;
            // The reply as received, with the REQ delimiter still in front.
            let check = |frames: &[Bytes]| {
                let body = match frames.split_first() {
                    Some((first, rest)) if first.is_empty() => rest,
                    _ => frames,
                };
                if accept(body) {
                    return true;
                }
                if let Some(observer) = observer.as_mut() {
                    observer(LazyEvent::Rejected(body.to_vec()));
                }
                false
            };
            match self.link.drive(&self.connector, &mut call, check).await {
                CallEvent::Resend { attempt } => self.emit(LazyEvent::Retrying {
                    next: attempt,
                    of: call.attempts(),
                }),
                CallEvent::Done(Ok(reply)) => return Ok(reply),
                // A Lazy Pirate call has one reply: it is never streamed.
                CallEvent::Part(_) => continue,
                CallEvent::Done(Err(_)) => {
                    return Err(LazyPirateError::ServerOffline {
                        attempts: call.attempts(),
                        request: call.body().to_vec(),
                    })
                }
            }
        }
    }

    fn emit(&mut self, event: LazyEvent) {
        if let Some(observer) = self.observer.as_mut() {
            observer(event);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The Lazy Pirate client over the in-memory transport on paused time, against a scripted
    //! REP-like server (a ROUTER that answers `[identity, empty, body...]`).

    use std::sync::{Arc, Mutex};

    use majordomo_rt::memory::{self, MemoryEndpoint, MemoryRouter};
    use majordomo_rt::transport::Transport;

    use super::*;

    /// Virtual time a test may wait for anything; never an expected duration.
    const PATIENCE: Duration = Duration::from_secs(600);

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// A client on `endpoint` and the events it reports.
    fn client(
        endpoint: &MemoryEndpoint,
        attempts: u32,
    ) -> (LazyPirate<MemoryEndpoint>, Arc<Mutex<Vec<LazyEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let config = LazyPirateConfig::default()
            .timeout(Duration::from_secs(1))
            .attempts(attempts);
        let client = LazyPirate::with_connector(endpoint.clone(), config)
            .on_event(move |event| seen.lock().unwrap().push(event));
        (client, events)
    }

    /// The next request at the server: the client's identity and the body after the REQ
    /// delimiter.
    async fn next_request(router: &mut MemoryRouter) -> (Bytes, Vec<Bytes>) {
        let frames = tokio::time::timeout(PATIENCE, router.recv())
            .await
            .expect("a request in time")
            .expect("router open");
        match &frames[..] {
            [identity, delimiter, body @ ..] if delimiter.is_empty() => {
                (identity.clone(), body.to_vec())
            }
            other => panic!("not a REQ request: {other:?}"),
        }
    }

    async fn answer(router: &mut MemoryRouter, identity: &Bytes, body: &'static str) {
        let reply = vec![identity.clone(), Bytes::new(), bytes(body)];
        router.send(reply).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn answered_requests_share_one_connection() {
        let (mut router, endpoint) = memory::router();
        let (mut client, events) = client(&endpoint, 3);
        let mut identities = Vec::new();
        for body in ["1", "2"] {
            let server = async {
                let (identity, request) = next_request(&mut router).await;
                assert_eq!(request, [bytes(body)]);
                answer(&mut router, &identity, body).await;
                identity
            };
            let (reply, identity) = tokio::join!(client.request(vec![bytes(body)]), server);
            assert_eq!(reply.unwrap(), [bytes(body)]);
            identities.push(identity);
        }
        assert_eq!(identities[0], identities[1]);
        assert!(events.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_on_new_connections_then_abandons() {
        let (mut router, endpoint) = memory::router();
        let (mut client, events) = client(&endpoint, 3);
        let call = tokio::spawn(async move { client.request(vec![bytes("hello")]).await });
        let mut identities = Vec::new();
        for _ in 0..3 {
            identities.push(next_request(&mut router).await.0);
        }
        match call.await.unwrap() {
            Err(LazyPirateError::ServerOffline { attempts, request }) => {
                assert_eq!(attempts, 3);
                assert_eq!(request, [bytes("hello")]);
            }
            other => panic!("expected ServerOffline, got {other:?}"),
        }
        assert_eq!(
            *events.lock().unwrap(),
            [
                LazyEvent::Retrying { next: 2, of: 3 },
                LazyEvent::Retrying { next: 3, of: 3 },
            ]
        );
        identities.sort();
        identities.dedup();
        assert_eq!(identities.len(), 3, "every attempt on its own connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_to_a_missed_attempt_is_dropped() {
        let (mut router, endpoint) = memory::router();
        let (mut client, events) = client(&endpoint, 3);
        let call = tokio::spawn(async move { client.request(vec![bytes("hello")]).await });
        let (first, _) = next_request(&mut router).await;
        let (second, _) = next_request(&mut router).await;
        // The first attempt's connection is closed: its answer goes nowhere.
        let stale = vec![first, Bytes::new(), bytes("stale")];
        assert!(router.send(stale).await.is_err());
        answer(&mut router, &second, "fresh").await;
        assert_eq!(call.await.unwrap().unwrap(), [bytes("fresh")]);
        assert_eq!(
            *events.lock().unwrap(),
            [LazyEvent::Retrying { next: 2, of: 3 }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_the_check_rejects_is_reported_and_skipped() {
        let (mut router, endpoint) = memory::router();
        let (mut client, events) = client(&endpoint, 1);
        let call = client.request_with(vec![bytes("7")], |reply| reply == [bytes("7")]);
        let server = async {
            let (identity, _) = next_request(&mut router).await;
            answer(&mut router, &identity, "6").await;
            answer(&mut router, &identity, "7").await;
        };
        let (reply, ()) = tokio::join!(call, server);
        assert_eq!(reply.unwrap(), [bytes("7")]);
        assert_eq!(
            *events.lock().unwrap(),
            [LazyEvent::Rejected(vec![bytes("6")])]
        );
    }
}
