//! The client side of a call: a sans-IO [`Call`] (7/MDP, 18/MDP, or the Guide's Lazy Pirate
//! request to a REQ/REP server) driven over connections that a [`Connector`] opens.
//!
//! [`CallLink::drive`] runs the call's current attempt until the call has something to say: it
//! connects if the link has no connection, sends the request if this attempt has not, and waits
//! for a reply or the attempt's deadline. A timeout or a failed connection closes the connection,
//! as 7/MDP requires ("close the request socket and open a new socket, and resend the request on
//! that new socket"; zmq.rs's DEALER does not reconnect by itself either), so a late reply to an
//! earlier attempt arrives on a closed connection and is never taken for a later attempt's. A
//! link whose call was answered keeps its connection, idle, for the caller's next call.
//!
//! The clock is read once per wake-up, and the attempt's deadline is one timer on the driver's
//! stack, moved only when the deadline moves (a PARTIAL of a gathered 18/MDP reply).

use std::pin::Pin;

use bytes::Bytes;
use majordomo_proto::client::{Call, CallEvent};
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::clock;
use crate::timer::rearm;
use crate::transport::{Connector, Transport, TransportError};

/// Where a link's connection is.
enum Conn<T> {
    /// None: the next attempt opens one.
    Closed,
    /// Open with nothing outstanding: the next attempt sends its request on it.
    Idle(T),
    /// The attempt's request went out on it, and its reply is awaited.
    Sent(T),
}

/// The connection a call runs on: none yet, idle, or carrying the current attempt's request.
///
/// A connection carries one request at a time, so a reply on it can only be for that request
/// (7/MDP has no request id). Keep the link of an answered call ([`CallLink::is_idle`]) for the
/// next call, as a pooled client does; drop the link of a call that failed.
pub struct CallLink<T> {
    conn: Conn<T>,
    /// The server, among a connector's several, of the link's last connection
    /// ([`Connector::connect_after`]): a new attempt's connection goes to another.
    server: Option<usize>,
}

impl<T> std::fmt::Debug for CallLink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.conn {
            Conn::Closed => "CallLink::Closed",
            Conn::Idle(_) => "CallLink::Idle",
            Conn::Sent(_) => "CallLink::Sent",
        })
    }
}

impl<T> Default for CallLink<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// How one attempt's wait ended.
enum Wait {
    /// A message the caller accepted.
    Reply(Vec<Bytes>),
    /// Connecting, sending or receiving failed.
    Lost(TransportError),
    /// The attempt's deadline passed.
    TimedOut,
}

impl<T> CallLink<T> {
    /// A link with no connection: the first attempt opens one.
    pub fn new() -> Self {
        Self {
            conn: Conn::Closed,
            server: None,
        }
    }

    /// Whether the link holds an open connection with no request outstanding: the last call on
    /// it was answered, and the next may use it.
    pub fn is_idle(&self) -> bool {
        matches!(self.conn, Conn::Idle(_))
    }
}

impl<T: Transport> CallLink<T> {
    /// Runs `call` until its next event: [`CallEvent::Resend`] after an attempt timed out or
    /// lost its connection (the connection is closed; call again to make the next attempt on a
    /// new one), [`CallEvent::Part`] for a part of a streamed reply (call again for the next),
    /// or [`CallEvent::Done`]. After `Done(Ok(_))` the link's connection is idle; after a
    /// failure it is closed.
    ///
    /// A message for which `accept` returns false is skipped, and the attempt waits on within
    /// its deadline (the Lazy Pirate client's check of a reply's sequence number).
    ///
    /// Dropping the future before it completes drops the connection, so a cancelled call's
    /// reply cannot reach a later one.
    ///
    /// # Panics
    /// If `call` is over ([`Call::is_done`]).
    pub async fn drive<C>(
        &mut self,
        connector: &C,
        call: &mut Call,
        mut accept: impl FnMut(&[Bytes]) -> bool,
    ) -> CallEvent
    where
        C: Connector<Conn = T>,
    {
        let mut deadline = call
            .poll_timeout()
            .expect("CallLink::drive on a call that is over");
        let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        let mut timer = std::pin::pin!(timer);
        let event = loop {
            let wait = self.wait(connector, call.request(), timer.as_mut(), &mut accept);
            match wait.await {
                Wait::Reply(frames) => {
                    // One read of the clock per wake-up.
                    if let Some(event) = call.handle_part(clock::now(), &frames) {
                        break event;
                    }
                    // A PARTIAL gathered: the timeout runs again from it, on the same connection.
                    if let Some(next) = call.poll_timeout() {
                        deadline = next;
                        rearm(timer.as_mut(), deadline);
                    }
                }
                Wait::Lost(error) => {
                    debug!(attempt = call.attempt(), %error, "connection failed");
                    break call
                        .handle_connection_lost(clock::now())
                        .expect("a call under way answers a lost connection");
                }
                Wait::TimedOut => {
                    warn!(
                        attempt = call.attempt(),
                        attempts = call.attempts(),
                        "no reply in time"
                    );
                    // `handle_timeout` acts only from the deadline on: never hand it less.
                    break call
                        .handle_timeout(clock::now().max(deadline))
                        .expect("a call under way answers its deadline");
                }
            }
        };
        match event {
            // More parts follow on the same connection.
            CallEvent::Part(_) => {}
            CallEvent::Done(Ok(_)) => {
                if let Conn::Sent(conn) = std::mem::replace(&mut self.conn, Conn::Closed) {
                    self.conn = Conn::Idle(conn);
                }
            }
            // A new attempt goes out on a new connection; a connection that brought a bad reply
            // is confused and not reused.
            CallEvent::Resend { .. } | CallEvent::Done(Err(_)) => self.conn = Conn::Closed,
        }
        event
    }

    /// One attempt's wait, until a reply `accept`ed, a failure or the deadline of `timer`:
    /// connects if there is no connection (within the time left), sends `request` if this
    /// attempt has not, then receives. The connection is held by this future until it
    /// completes, so dropping it closes the connection.
    async fn wait<C>(
        &mut self,
        connector: &C,
        request: &[Bytes],
        mut timer: Pin<&mut Sleep>,
        accept: &mut impl FnMut(&[Bytes]) -> bool,
    ) -> Wait
    where
        C: Connector<Conn = T>,
    {
        let mut conn = match std::mem::replace(&mut self.conn, Conn::Closed) {
            Conn::Sent(conn) => conn,
            unsent => {
                let mut conn = match unsent {
                    Conn::Idle(conn) => conn,
                    // Closed (a sent request was matched above).
                    _ => {
                        // zmq.rs retries a refused connection until its own timeout: both are
                        // bounded by the attempt's deadline.
                        let deadline = timer.deadline().into_std();
                        let left = deadline.saturating_duration_since(clock::now());
                        let connected = tokio::select! {
                            biased;
                            // Dropping an unfinished connect drops what it opened.
                            result = connector.connect_after(left, &mut self.server) => {
                                Some(result)
                            }
                            // Timers are cancel-safe.
                            () = timer.as_mut() => None,
                        };
                        match connected {
                            Some(Ok(conn)) => conn,
                            Some(Err(error)) => return Wait::Lost(error),
                            None => return Wait::TimedOut,
                        }
                    }
                };
                let sent = tokio::select! {
                    biased;
                    // A send that has to wait (the peer's queue is full) is given up with the
                    // connection.
                    result = conn.send(request.to_vec()) => Some(result),
                    () = timer.as_mut() => None,
                };
                match sent {
                    Some(Ok(())) => conn,
                    Some(Err(error)) => return Wait::Lost(error),
                    None => return Wait::TimedOut,
                }
            }
        };
        let wait = loop {
            let received = tokio::select! {
                biased;
                // `Transport::recv` is cancel-safe: a message not returned stays queued.
                result = conn.recv() => Some(result),
                () = timer.as_mut() => None,
            };
            match received {
                Some(Ok(frames)) if accept(&frames) => break Wait::Reply(frames),
                // Rejected by the caller: wait on within the same attempt.
                Some(Ok(_)) => continue,
                Some(Err(error)) => break Wait::Lost(error),
                None => break Wait::TimedOut,
            }
        };
        // Put back even after a failure, for `drive` to close as the call decides.
        self.conn = Conn::Sent(conn);
        wait
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use majordomo_proto::client::CallError;
    use majordomo_proto::mdp::ClientReply;
    use majordomo_proto::mdp2::{self, Dialect, Part};
    use majordomo_proto::Limits;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::memory::{self, MemoryDealer, MemoryEndpoint, MemoryRouter};

    /// Virtual time a test may wait for anything; never an expected duration.
    const PATIENCE: Duration = Duration::from_secs(600);
    const TIMEOUT: Duration = Duration::from_secs(1);

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn echo_call(attempts: u32) -> Call {
        Call::new(
            clock::now(),
            bytes("echo"),
            vec![bytes("hello")],
            TIMEOUT,
            attempts,
            Limits::default(),
        )
        .expect("valid service")
    }

    /// Drives `call` on a new link to its end, with the instant of each event.
    fn drive_to_end(
        endpoint: MemoryEndpoint,
        mut call: Call,
    ) -> JoinHandle<Vec<(CallEvent, Instant)>> {
        tokio::spawn(async move {
            let mut link = CallLink::<MemoryDealer>::new();
            let mut events = Vec::new();
            while !call.is_done() {
                let event = link.drive(&endpoint, &mut call, |_| true).await;
                events.push((event, clock::now()));
            }
            events
        })
    }

    /// The next request at the server: the client's identity and the request's frames.
    async fn next_request(router: &mut MemoryRouter) -> (Bytes, Vec<Bytes>) {
        let mut frames = tokio::time::timeout(PATIENCE, router.recv())
            .await
            .expect("a request in time")
            .expect("router open");
        let identity = frames.remove(0);
        (identity, frames)
    }

    fn reply_to(identity: &Bytes, body: &'static str) -> Vec<Bytes> {
        ClientReply {
            service: bytes("echo"),
            body: vec![bytes(body)],
        }
        .encode_routed(identity)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_call_leaves_its_connection_idle_for_the_next() {
        let (mut router, endpoint) = memory::router();
        let mut link = CallLink::<MemoryDealer>::new();
        let mut identities = Vec::new();
        for body in ["one", "two"] {
            let mut call = echo_call(3);
            let client = async { link.drive(&endpoint, &mut call, |_| true).await };
            let server = async {
                let (identity, request) = next_request(&mut router).await;
                assert_eq!(request, call_request(&echo_call(1)));
                router.send(reply_to(&identity, body)).await.unwrap();
                identity
            };
            let (event, identity) = tokio::join!(client, server);
            assert_eq!(event, CallEvent::Done(Ok(vec![bytes(body)])));
            assert!(link.is_idle());
            identities.push(identity);
        }
        assert_eq!(
            identities[0], identities[1],
            "the second call reused the connection"
        );
    }

    fn call_request(call: &Call) -> Vec<Bytes> {
        call.request().to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_is_resent_on_a_new_connection_per_attempt_then_gives_up() {
        let (mut router, endpoint) = memory::router();
        let t0 = clock::now();
        let client = drive_to_end(endpoint, echo_call(3));
        let mut identities = Vec::new();
        for _ in 0..3 {
            let (identity, request) = next_request(&mut router).await;
            assert_eq!(request, call_request(&echo_call(1)));
            identities.push(identity);
        }
        let events = client.await.unwrap();
        let kinds: Vec<_> = events.iter().map(|(event, _)| event.clone()).collect();
        assert_eq!(
            kinds,
            [
                CallEvent::Resend { attempt: 2 },
                CallEvent::Resend { attempt: 3 },
                CallEvent::Done(Err(CallError::NoReply { attempts: 3 })),
            ]
        );
        // Each attempt waited its whole timeout.
        for (n, (_, at)) in events.iter().enumerate() {
            assert!(
                *at >= t0 + TIMEOUT * (n as u32 + 1),
                "attempt {n} ended early"
            );
        }
        identities.sort();
        identities.dedup();
        assert_eq!(identities.len(), 3, "every attempt on its own connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_to_an_earlier_attempt_is_dropped() {
        let (mut router, endpoint) = memory::router();
        let client = drive_to_end(endpoint, echo_call(2));
        let (first, _) = next_request(&mut router).await;
        let (second, _) = next_request(&mut router).await;
        assert_ne!(first, second);
        // The answer to the first attempt comes after the client gave up on it: its connection
        // is closed, so it cannot reach the call.
        assert!(router.send(reply_to(&first, "stale")).await.is_err());
        router.send(reply_to(&second, "fresh")).await.unwrap();
        let events = client.await.unwrap();
        assert_eq!(
            events.last().map(|(event, _)| event.clone()),
            Some(CallEvent::Done(Ok(vec![bytes("fresh")])))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_the_caller_rejects_is_skipped_within_the_attempt() {
        let (mut router, endpoint) = memory::router();
        let mut call = Call::lazy_pirate(clock::now(), vec![bytes("7")], TIMEOUT, 1);
        let mut link = CallLink::<MemoryDealer>::new();
        let client = link.drive(&endpoint, &mut call, |frames| {
            frames.last() == Some(&bytes("7"))
        });
        let server = async {
            let (identity, request) = next_request(&mut router).await;
            assert_eq!(request, [Bytes::new(), bytes("7")]);
            for body in ["6", "7"] {
                let reply = vec![identity.clone(), Bytes::new(), bytes(body)];
                router.send(reply).await.unwrap();
            }
        };
        let (event, ()) = tokio::join!(client, server);
        assert_eq!(event, CallEvent::Done(Ok(vec![bytes("7")])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_server_fails_every_attempt_at_once() {
        let (router, endpoint) = memory::router();
        drop(router);
        let t0 = clock::now();
        let events = drive_to_end(endpoint, echo_call(3)).await.unwrap();
        assert_eq!(
            events.last().map(|(event, _)| event.clone()),
            Some(CallEvent::Done(Err(CallError::NoReply { attempts: 3 })))
        );
        assert_eq!(events.len(), 3);
        assert!(
            events.iter().all(|(_, at)| *at == t0),
            "no attempt waited its timeout"
        );
    }

    fn v02_call(now: Instant) -> Call {
        Call::new_v02(
            now,
            bytes("echo"),
            vec![bytes("hello")],
            TIMEOUT,
            3,
            Limits::default(),
            Dialect::Rfc18,
        )
        .expect("valid service")
    }

    fn part(identity: &Bytes, part: Part, body: &'static str) -> Vec<Bytes> {
        mdp2::ClientReply {
            part,
            service: bytes("echo"),
            body: vec![bytes(body)],
        }
        .encode_routed(identity, Dialect::Rfc18)
    }

    #[tokio::test(start_paused = true)]
    async fn a_gathered_reply_runs_its_timeout_from_each_part() {
        let (mut router, endpoint) = memory::router();
        let client = drive_to_end(endpoint, v02_call(clock::now()));
        let (identity, _) = next_request(&mut router).await;
        // Each part comes within the timeout of the one before, the whole past it.
        let gap = TIMEOUT * 9 / 10;
        for (kind, body) in [
            (Part::Partial, "a"),
            (Part::Partial, "b"),
            (Part::Final, "c"),
        ] {
            tokio::time::sleep(gap).await;
            router.send(part(&identity, kind, body)).await.unwrap();
        }
        let events = client.await.unwrap();
        let kinds: Vec<_> = events.into_iter().map(|(event, _)| event).collect();
        assert_eq!(
            kinds,
            [CallEvent::Done(Ok(vec![
                bytes("a"),
                bytes("b"),
                bytes("c")
            ]))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_reply_that_stops_after_a_part_is_not_retried() {
        let (mut router, endpoint) = memory::router();
        let client = drive_to_end(endpoint, v02_call(clock::now()).streamed());
        let (identity, _) = next_request(&mut router).await;
        router
            .send(part(&identity, Part::Partial, "a"))
            .await
            .unwrap();
        let events = client.await.unwrap();
        let kinds: Vec<_> = events.into_iter().map(|(event, _)| event).collect();
        assert_eq!(
            kinds,
            [
                CallEvent::Part(vec![bytes("a")]),
                CallEvent::Done(Err(CallError::Interrupted { parts: 1 })),
            ]
        );
        // No second attempt reached the server.
        let resent = tokio::time::timeout(PATIENCE, router.recv()).await;
        assert!(!matches!(resent, Ok(Ok(_))), "the request was resent");
    }
}
