//! The Lazy Pirate client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use majordomo_proto::client::{Call, CallEvent};
use majordomo_rt::clock;
use majordomo_rt::transport::{connect_dealer, Transport};
use tracing::warn;
use zeromq::DealerSocket;

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
pub struct LazyPirate {
    endpoint: String,
    config: LazyPirateConfig,
    socket: Option<DealerSocket>,
    observer: Option<Box<dyn FnMut(LazyEvent) + Send>>,
}

impl std::fmt::Debug for LazyPirate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPirate")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LazyPirate {
    /// A client for the server at `endpoint`; nothing connects before the first request.
    pub fn new(endpoint: impl Into<String>, config: LazyPirateConfig) -> Self {
        Self {
            endpoint: endpoint.into(),
            config,
            socket: None,
            observer: None,
        }
    }

    /// Calls `observer` with each [`LazyEvent`].
    pub fn on_event(mut self, observer: impl FnMut(LazyEvent) + Send + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Sends `request` and returns the first reply.
    pub async fn request(&mut self, request: Vec<Bytes>) -> Result<Vec<Bytes>, LazyPirateError> {
        self.request_with(request, |_| true).await
    }

    /// Sends `request` and returns the first reply that `accept` approves; other replies are
    /// reported as [`LazyEvent::Rejected`] and skipped within the same timeout.
    ///
    /// The attempts and timeouts are those of [`majordomo_proto::client::Call::lazy_pirate`]; this
    /// driver only connects, sends, and reads.
    pub async fn request_with(
        &mut self,
        request: Vec<Bytes>,
        mut accept: impl FnMut(&[Bytes]) -> bool,
    ) -> Result<Vec<Bytes>, LazyPirateError> {
        let mut call = Call::lazy_pirate(
            clock::now(),
            request,
            self.config.timeout,
            self.config.attempts,
        );
        loop {
            let deadline = call
                .poll_timeout()
                .expect("a call under way has a deadline");
            let event = match self.attempt(call.request(), deadline, &mut accept).await {
                Some(reply) => call.handle_reply(&reply),
                None => {
                    warn!(
                        endpoint = %self.endpoint,
                        attempt = call.attempt(),
                        attempts = call.attempts(),
                        "no response from server"
                    );
                    // Close and forget the socket: a late reply must not reach the next request.
                    self.socket = None;
                    call.handle_timeout(clock::now().max(deadline))
                }
            };
            match event.expect("a call that is not done answers every input") {
                CallEvent::Resend { attempt } => self.emit(LazyEvent::Retrying {
                    next: attempt,
                    of: call.attempts(),
                }),
                CallEvent::Done(Ok(reply)) => return Ok(reply),
                // A Lazy Pirate call has one reply: it is never streamed.
                CallEvent::Part(_) => unreachable!("a Lazy Pirate call has no parts"),
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

    /// One attempt: connect if needed, send, wait until `deadline` for an accepted reply (as
    /// received, with the REQ delimiter still in front).
    async fn attempt(
        &mut self,
        frames: &[Bytes],
        deadline: Instant,
        accept: &mut impl FnMut(&[Bytes]) -> bool,
    ) -> Option<Vec<Bytes>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.socket.is_none() {
            let connect = connect_dealer(&self.endpoint, self.config.timeout);
            // Connecting may take the whole attempt; then there is nothing more to wait for.
            self.socket = Some(
                tokio::time::timeout_at(deadline, connect)
                    .await
                    .ok()?
                    .ok()?,
            );
        }
        let socket = self.socket.as_mut().expect("connected above");
        tokio::time::timeout_at(deadline, socket.send(frames.to_vec()))
            .await
            .ok()?
            .ok()?;
        loop {
            let frames = tokio::time::timeout_at(deadline, socket.recv())
                .await
                .ok()?
                .ok()?;
            let body = match frames.split_first() {
                Some((first, rest)) if first.is_empty() => rest,
                _ => &frames[..],
            };
            if accept(body) {
                return Some(frames);
            }
            if let Some(observer) = self.observer.as_mut() {
                observer(LazyEvent::Rejected(body.to_vec()));
            }
        }
    }
}
