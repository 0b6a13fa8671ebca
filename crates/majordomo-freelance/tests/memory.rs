//! The Freelance client and server drivers over the in-memory sockets, on paused time: failover
//! from a server that goes away, a slow server's late reply dropped as stale, every server gone.

use std::time::Duration;

use bytes::Bytes;
use majordomo_freelance::{
    handler_fn, FreelanceClient, FreelanceClientError, FreelanceConfig, FreelanceError,
    FreelanceServer, ServerStats,
};
use majordomo_rt::memory::{router, MemoryEndpoint};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn config() -> FreelanceConfig {
    FreelanceConfig::default()
        .ping_interval(Duration::from_millis(100))
        .server_ttl(Duration::from_millis(300))
        .attempt_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
}

/// A server that answers `tag:` and the request's first frame after `delay`.
fn server(
    tag: &'static str,
    delay: Duration,
) -> (
    MemoryEndpoint,
    oneshot::Sender<()>,
    JoinHandle<Result<ServerStats, majordomo_freelance::FreelanceServerError>>,
) {
    let (socket, endpoint) = router();
    let server = FreelanceServer::with_transport(socket, tag);
    let (stop, stopped) = oneshot::channel::<()>();
    let handler = handler_fn(move |body: Vec<Bytes>| async move {
        tokio::time::sleep(delay).await;
        let mut reply = tag.as_bytes().to_vec();
        reply.push(b':');
        reply.extend_from_slice(&body[0]);
        Ok(vec![Bytes::from(reply)])
    });
    let task = tokio::spawn(server.run(handler, async {
        let _ = stopped.await;
    }));
    (endpoint, stop, task)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(start_paused = true)]
async fn requests_go_to_the_first_live_server_and_move_on_when_it_goes_away() {
    let (a, stop_a, task_a) = server("a", Duration::ZERO);
    let (b_end, _stop_b, _task_b) = server("b", Duration::ZERO);
    let client =
        FreelanceClient::with_connectors([(b("a"), a), (b("b"), b_end)], config()).unwrap();
    for i in 0..10 {
        let reply = client.request(vec![b(&format!("{i}"))]).await.unwrap();
        assert_eq!(reply, [b(&format!("a:{i}"))]);
    }
    let _ = stop_a.send(());
    assert_eq!(task_a.await.unwrap().unwrap().replies, 10);
    for i in 10..20 {
        let reply = client.request(vec![b(&format!("{i}"))]).await.unwrap();
        assert_eq!(reply, [b(&format!("b:{i}"))]);
    }
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.replies, stats.failed, stats.alive), (20, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_slow_servers_late_reply_is_dropped_not_delivered() {
    let (slow, _stop_slow, _slow_task) = server("slow", Duration::from_secs(1));
    let (fast, _stop_fast, _fast_task) = server("fast", Duration::ZERO);
    let client =
        FreelanceClient::with_connectors([(b("slow"), slow), (b("fast"), fast)], config()).unwrap();
    // To the slow server first; after the attempt timeout, to the fast one.
    let reply = client.request(vec![b("x")]).await.unwrap();
    assert_eq!(reply, [b("fast:x")]);
    // The slow server answers later: dropped and counted, never handed to a caller.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.stale, stats.failovers, stats.replies), (1, 1, 1));
    // The slow server is suspect now: the next request goes straight to the fast one.
    let reply = client.request(vec![b("y")]).await.unwrap();
    assert_eq!(reply, [b("fast:y")]);
}

#[tokio::test(start_paused = true)]
async fn with_every_server_gone_a_request_fails_cleanly() {
    let (a, stop_a, task_a) = server("a", Duration::ZERO);
    let client = FreelanceClient::with_connectors([(b("a"), a)], config()).unwrap();
    assert_eq!(client.request(vec![b("1")]).await.unwrap(), [b("a:1")]);
    let _ = stop_a.send(());
    task_a.await.unwrap().unwrap();
    let failed = client.request(vec![b("2")]).await;
    assert!(
        matches!(
            failed,
            Err(FreelanceClientError::Request(FreelanceError::NoReply {
                alive: 0,
                ..
            }))
        ),
        "{failed:?}"
    );
}
