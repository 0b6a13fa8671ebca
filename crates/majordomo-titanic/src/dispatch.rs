//! How Titanic sends a stored request to its service and gets the reply: the [`Dispatch`] seam.
//!
//! The default is a 7/MDP [`Client`] of the broker (with its timeout and attempts); tests and
//! embedders give another one, such as [`dispatch_fn`] over a closure, to run the server with
//! no broker and on paused time.

use std::future::Future;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use majordomo_client::Client;
use majordomo_rt::transport::Connector;

/// The error a [`Dispatch`] returns: anything, logged, and the service backs off.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Sends `body` to `service` and returns the reply's body, or why there is none (after any
/// retries of its own: an error makes the service back off, and the request is sent again
/// after it).
pub trait Dispatch: Send + Sync + 'static {
    /// One request, start to finish.
    fn request(
        &self,
        service: Bytes,
        body: Vec<Bytes>,
    ) -> BoxFuture<'static, Result<Vec<Bytes>, BoxError>>;
}

/// A 7/MDP client over any connector: zmq.rs DEALER sockets to the broker (as
/// [`Titanic::new`](crate::Titanic::new) makes it), or the in-memory sockets of
/// `majordomo_rt::memory`.
impl<C: Connector + 'static> Dispatch for Client<C> {
    fn request(
        &self,
        service: Bytes,
        body: Vec<Bytes>,
    ) -> BoxFuture<'static, Result<Vec<Bytes>, BoxError>> {
        let client = self.clone();
        async move {
            Client::request(&client, service, body)
                .await
                .map_err(BoxError::from)
        }
        .boxed()
    }
}

/// A [`Dispatch`] from a closure returning a future.
#[derive(Clone)]
pub struct DispatchFn<F>(F);

impl<F> std::fmt::Debug for DispatchFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DispatchFn")
    }
}

/// Makes a [`Dispatch`] of `f(service, body)`.
pub fn dispatch_fn<F, Fut>(f: F) -> DispatchFn<F>
where
    F: Fn(Bytes, Vec<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    DispatchFn(f)
}

impl<F, Fut> Dispatch for DispatchFn<F>
where
    F: Fn(Bytes, Vec<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Bytes>, BoxError>> + Send + 'static,
{
    fn request(
        &self,
        service: Bytes,
        body: Vec<Bytes>,
    ) -> BoxFuture<'static, Result<Vec<Bytes>, BoxError>> {
        (self.0)(service, body).boxed()
    }
}
