//! [`MuxClient::split`]: the asynchronous client on tags, as a sender and a stream of replies.
//!
//! The Guide's asynchronous client (`AsyncClient` here) gets replies in the order the broker
//! sends them and leaves matching them to the caller. Split from a [`MuxClient`], each request
//! gets an id from [`MuxSender::send`] and its reply comes out of [`MuxReplies`] with that id,
//! in whatever order the replies arrive, each matched by its tag, retried and failed over as
//! [`MuxClient::request`] does. The sender is `Clone`, so any number of tasks can send while
//! one reads the replies.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use majordomo_rt::transport::Connector;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::{ClientError, MuxClient};

/// A reply out of [`MuxReplies`]: the id [`MuxSender::send`] gave its request, and the reply
/// body or why there is none.
pub type Tagged = (u64, Result<Vec<Bytes>, ClientError>);

/// The sending half of a split [`MuxClient`]; clones share it.
pub struct MuxSender<C: Connector + Clone> {
    client: MuxClient<C>,
    replies: mpsc::UnboundedSender<(Tagged, OwnedSemaphorePermit)>,
    window: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
}

impl<C: Connector + Clone> Clone for MuxSender<C> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            replies: self.replies.clone(),
            window: self.window.clone(),
            next_id: self.next_id.clone(),
        }
    }
}

impl<C: Connector + Clone> std::fmt::Debug for MuxSender<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxSender")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a split [`MuxClient`]: every request's reply, each with its id, in the
/// order they arrive. Ends when every [`MuxSender`] is dropped and every reply has been taken.
#[derive(Debug)]
pub struct MuxReplies {
    replies: mpsc::UnboundedReceiver<(Tagged, OwnedSemaphorePermit)>,
}

impl<C> MuxClient<C>
where
    C: Connector + Clone + 'static,
    C::Conn: 'static,
{
    /// Splits the client into a sender and a stream of replies (see [`MuxSender`]). At most
    /// `window` requests are under way or answered and not yet taken from the stream; a send
    /// past that waits.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn split(self, window: usize) -> (MuxSender<C>, MuxReplies) {
        assert!(window > 0, "a window of at least one request");
        let (replies, receiver) = mpsc::unbounded_channel();
        let sender = MuxSender {
            client: self,
            replies,
            window: Arc::new(Semaphore::new(window)),
            next_id: Arc::new(AtomicU64::new(0)),
        };
        (sender, MuxReplies { replies: receiver })
    }
}

impl<C> MuxSender<C>
where
    C: Connector + Clone + 'static,
    C::Conn: 'static,
{
    /// Sends `body` to `service` once the window has room, and returns the id its reply will
    /// carry. Cancel-safe: dropped before it returns, nothing was sent.
    pub async fn send(&self, service: impl Into<Bytes>, body: Vec<Bytes>) -> u64 {
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (client, replies, service) =
            (self.client.clone(), self.replies.clone(), service.into());
        tokio::spawn(async move {
            let reply = client.request(service, body).await;
            // The stream is gone: nobody wants the reply.
            let _ = replies.send(((id, reply), permit));
        });
        id
    }

    /// What the client's task has seen so far ([`MuxClient::stats`]); cancel-safe as that is.
    pub async fn stats(&self) -> crate::MuxStats {
        self.client.stats().await
    }
}

impl Stream for MuxReplies {
    type Item = Tagged;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Tagged>> {
        // The permit goes back to the window as the reply is taken.
        self.replies
            .poll_recv(cx)
            .map(|item| item.map(|(tagged, _permit)| tagged))
    }
}
