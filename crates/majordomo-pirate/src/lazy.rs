//! The Lazy Pirate client.

use std::time::Duration;

use bytes::Bytes;
use tracing::warn;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// Timeout and attempts of a [`LazyPirate`] client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyPirateConfig {
    /// How long to wait for each reply (default 2500 ms, the Guide's `REQUEST_TIMEOUT`).
    pub timeout: Duration,
    /// Attempts in all before giving up (default 3, the Guide's `REQUEST_RETRIES`). Zero is
    /// treated as one.
    pub retries: u32,
}

impl Default for LazyPirateConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(2500),
            retries: 3,
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
    pub async fn request_with(
        &mut self,
        request: Vec<Bytes>,
        mut accept: impl FnMut(&[Bytes]) -> bool,
    ) -> Result<Vec<Bytes>, LazyPirateError> {
        let attempts = self.config.retries.max(1);
        let mut frames = Vec::with_capacity(request.len() + 1);
        frames.push(Bytes::new());
        frames.extend(request.iter().cloned());
        for attempt in 1..=attempts {
            if attempt > 1 {
                self.emit(LazyEvent::Retrying {
                    next: attempt,
                    of: attempts,
                });
            }
            let deadline = tokio::time::Instant::now() + self.config.timeout;
            match self.attempt(&frames, deadline, &mut accept).await {
                Some(reply) => return Ok(reply),
                None => {
                    warn!(endpoint = %self.endpoint, attempt, attempts, "no response from server");
                    // Close and forget the socket: a late reply must not reach the next request.
                    self.socket = None;
                }
            }
        }
        Err(LazyPirateError::ServerOffline { attempts, request })
    }

    fn emit(&mut self, event: LazyEvent) {
        if let Some(observer) = self.observer.as_mut() {
            observer(event);
        }
    }

    /// One attempt: connect if needed, send, wait until `deadline` for an accepted reply.
    async fn attempt(
        &mut self,
        frames: &[Bytes],
        deadline: tokio::time::Instant,
        accept: &mut impl FnMut(&[Bytes]) -> bool,
    ) -> Option<Vec<Bytes>> {
        if self.socket.is_none() {
            let mut options = SocketOptions::default();
            options.connect_timeout(self.config.timeout);
            let mut socket = DealerSocket::with_options(options);
            match tokio::time::timeout_at(deadline, socket.connect(&self.endpoint)).await {
                Ok(Ok(())) => self.socket = Some(socket),
                _ => {
                    // Connecting took the whole attempt; wait out nothing more.
                    return None;
                }
            }
        }
        let socket = self.socket.as_mut().expect("connected above");
        let msg = ZmqMessage::try_from(frames.to_vec()).expect("frames");
        if tokio::time::timeout_at(deadline, socket.send(msg))
            .await
            .ok()?
            .is_err()
        {
            return None;
        }
        loop {
            let frames = match tokio::time::timeout_at(deadline, socket.recv()).await {
                Ok(Ok(msg)) => msg.into_vec(),
                _ => return None,
            };
            // A REP server's reply starts with the empty delimiter, as REQ expects.
            let reply = match frames.split_first() {
                Some((first, rest)) if first.is_empty() => rest.to_vec(),
                _ => frames,
            };
            if accept(&reply) {
                return Some(reply);
            }
            if let Some(observer) = self.observer.as_mut() {
                observer(LazyEvent::Rejected(reply));
            }
        }
    }
}
