//! [`tower_service::Service`] for [`Client`] (feature `tower`), so that tower's layers (timeout,
//! concurrency limit, rate limit, retry, load shedding) wrap calls as they wrap any other
//! service.
//!
//! A [`Client`] is a `Service<Request>`: each [`Request`] names its service. For one service,
//! [`Client::service`] gives a [`ServiceClient`], a `Service<Vec<Bytes>>` whose requests are
//! bodies alone, as a tonic client is bound to its service:
//!
//! ```
//! use majordomo_client::{Client, ClientConfig};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), tower::BoxError> {
//! let client = Client::new("tcp://127.0.0.1:5555", ClientConfig::default());
//! let echo = ServiceBuilder::new()
//!     .concurrency_limit(64)
//!     .timeout(std::time::Duration::from_secs(5))
//!     .service(client.service("echo"));
//! let reply = echo.oneshot(vec!["hello".into()]).await?;
//! # let _ = reply;
//! # Ok(())
//! # }
//! ```
//!
//! Both are always ready: the client opens a connection per request in flight and keeps idle
//! ones for reuse, so readiness is for a layer such as `concurrency_limit` to decide. A call's
//! future is cancel-safe as [`Client::request`] is: a `timeout` layer that drops it closes the
//! request's connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use majordomo_rt::transport::Connector;

use crate::{Client, ClientError};

/// One request to a [`Client`] used as a `tower_service::Service`: the service to call and
/// the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The service name.
    pub service: Bytes,
    /// The request body frames.
    pub body: Vec<Bytes>,
}

impl Request {
    /// A request for `service` with `body`.
    pub fn new(service: impl Into<Bytes>, body: Vec<Bytes>) -> Self {
        Self {
            service: service.into(),
            body,
        }
    }
}

/// The future of a call through `tower_service::Service`: the reply body, or why none came.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Vec<Bytes>, ClientError>> + Send + 'static>>;

impl<C: Connector + 'static> tower_service::Service<Request> for Client<C> {
    type Response = Vec<Bytes>;
    type Error = ClientError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ResponseFuture {
        let client = self.clone();
        Box::pin(async move { client.request(request.service, request.body).await })
    }
}

/// A [`Client`] bound to one service: a `tower_service::Service` whose requests are bodies.
/// Made by [`Client::service`]; clones share the client's connections.
pub struct ServiceClient<C: Connector = crate::DealerConnector> {
    client: Client<C>,
    service: Bytes,
}

impl<C: Connector> Clone for ServiceClient<C> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            service: self.service.clone(),
        }
    }
}

impl<C: Connector> std::fmt::Debug for ServiceClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("client", &self.client)
            .field("service", &self.service)
            .finish()
    }
}

impl<C: Connector> Client<C> {
    /// This client bound to `service`, as a `tower_service::Service` of request bodies
    /// (feature `tower`).
    pub fn service(&self, service: impl Into<Bytes>) -> ServiceClient<C> {
        ServiceClient {
            client: self.clone(),
            service: service.into(),
        }
    }
}

impl<C: Connector> ServiceClient<C> {
    /// The service the requests go to.
    pub fn name(&self) -> &Bytes {
        &self.service
    }
}

impl<C: Connector + 'static> tower_service::Service<Vec<Bytes>> for ServiceClient<C> {
    type Response = Vec<Bytes>;
    type Error = ClientError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, body: Vec<Bytes>) -> ResponseFuture {
        let (client, service) = (self.client.clone(), self.service.clone());
        Box::pin(async move { client.request(service, body).await })
    }
}

#[cfg(test)]
mod tests {
    //! Tower's own layers around the client, over the in-memory transport on paused time,
    //! against a scripted broker.

    use std::time::Duration;

    use majordomo_proto::mdp::{ClientReply, ClientRequest};
    use majordomo_rt::memory::{self, MemoryRouter};
    use majordomo_rt::transport::Transport;
    use tower::{Service, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::tests::next_request;
    use crate::ClientConfig;

    async fn echo_back(router: &mut MemoryRouter, identity: &Bytes, request: ClientRequest) {
        let reply = ClientReply {
            service: request.service,
            body: request.body,
        };
        router.send(reply.encode_routed(identity)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_names_its_service_and_a_bound_client_its_body_only() {
        let (mut router, endpoint) = memory::router();
        let client = Client::with_connector(endpoint, ClientConfig::default());
        let named = tokio::spawn(
            client
                .clone()
                .oneshot(Request::new("echo", vec![Bytes::from_static(b"one")])),
        );
        let (identity, request) = next_request(&mut router).await;
        assert_eq!(request.service, Bytes::from_static(b"echo"));
        echo_back(&mut router, &identity, request).await;
        assert_eq!(named.await.unwrap().unwrap(), [Bytes::from_static(b"one")]);

        let bound = client.service("upper");
        assert_eq!(bound.name(), &Bytes::from_static(b"upper"));
        let call = tokio::spawn(bound.oneshot(vec![Bytes::from_static(b"two")]));
        let (identity, request) = next_request(&mut router).await;
        assert_eq!(request.service, Bytes::from_static(b"upper"));
        echo_back(&mut router, &identity, request).await;
        assert_eq!(call.await.unwrap().unwrap(), [Bytes::from_static(b"two")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_concurrency_limit_holds_calls_back_until_one_is_answered() {
        let (mut router, endpoint) = memory::router();
        let client = Client::with_connector(endpoint, ClientConfig::default());
        let limited = ServiceBuilder::new()
            .concurrency_limit(1)
            .service(client.service("echo"));
        let calls: Vec<_> = (0..2u8)
            .map(|n| {
                let service = limited.clone();
                tokio::spawn(service.oneshot(vec![Bytes::from(vec![n])]))
            })
            .collect();
        let (identity, first) = next_request(&mut router).await;
        // The second call waits for the limit's permit: the broker sees nothing more while
        // the first is unanswered, however long that takes.
        let early = tokio::time::timeout(Duration::from_secs(1), router.recv()).await;
        assert!(early.is_err(), "a second request while the limit is 1");
        echo_back(&mut router, &identity, first).await;
        let (identity, second) = next_request(&mut router).await;
        echo_back(&mut router, &identity, second).await;
        let mut replies = Vec::new();
        for call in calls {
            replies.push(call.await.unwrap().unwrap());
        }
        replies.sort();
        assert_eq!(
            replies,
            [vec![Bytes::from(vec![0])], vec![Bytes::from(vec![1])]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_layer_ends_a_call_the_broker_does_not_answer() {
        let (mut router, endpoint) = memory::router();
        let config = ClientConfig::default().timeout(Duration::from_secs(30));
        let client = Client::with_connector(endpoint, config);
        let mut limited = ServiceBuilder::new()
            .timeout(Duration::from_secs(1))
            .service(client.service("echo"));
        let call = limited
            .ready()
            .await
            .unwrap()
            .call(vec![Bytes::from_static(b"hi")]);
        let (outcome, _) = tokio::join!(call, next_request(&mut router));
        let error = outcome.expect_err("the layer's timeout, not a reply");
        assert!(
            error.is::<tower::timeout::error::Elapsed>(),
            "expected Elapsed, got {error}"
        );
    }
}
