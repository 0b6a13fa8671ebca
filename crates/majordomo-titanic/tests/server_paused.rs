//! The whole Titanic server over the in-memory transport on paused tokio time: our broker on a
//! memory socket, Titanic's three services' workers connected to it, a fake dispatch in place of
//! the 7/MDP client, the memory store, and a raw 7/MDP client asking the TSP services. Backoff,
//! retention and held questions play out in virtual seconds, with no socket and no wall-clock
//! wait.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use majordomo_broker::{Broker, BrokerConfig, EndpointRole};
use majordomo_proto::mdp::{ClientReply, ClientRequest};
use majordomo_proto::Limits;
use majordomo_rt::memory::{self, MemoryDealer, MemoryEndpoint, MemoryRouter};
use majordomo_rt::transport::Transport;
use majordomo_titanic::core::CoreConfig;
use majordomo_titanic::dispatch::BoxError;
use majordomo_titanic::store::{Entry, MemoryStore, Op, Store, StoreError};
use majordomo_titanic::tsp::Uuid;
use majordomo_titanic::{
    dispatch_fn, Dispatch, Titanic, TitanicConfig, TitanicHandle, TitanicStats,
};
use majordomo_worker::WorkerConfig;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Virtual time a test may wait for anything; never an expected duration.
const PATIENCE: Duration = Duration::from_secs(600);

fn f(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

/// A raw 7/MDP client on the memory broker.
struct Tsp(MemoryDealer);

impl Tsp {
    async fn call(&mut self, service: &str, body: Vec<Bytes>) -> Vec<Bytes> {
        let request = ClientRequest::new(f(service), body);
        self.0.send(request.encode()).await.expect("broker up");
        let frames = tokio::time::timeout(PATIENCE, self.0.recv())
            .await
            .expect("an answer in time")
            .expect("broker up");
        ClientReply::decode(&frames, &Limits::default())
            .expect("a 7/MDP reply")
            .body
    }

    async fn submit(&mut self, service: &str, body: &str) -> Uuid {
        let answer = self
            .call("titanic.request", vec![f(service), f(body)])
            .await;
        assert_eq!(answer[0], f("200"), "{answer:?}");
        Uuid::parse(&answer[1]).expect("a UUID")
    }

    async fn reply(&mut self, uuid: Uuid) -> Vec<Bytes> {
        self.call("titanic.reply", vec![uuid.frame()]).await
    }
}

/// A broker on a memory socket, Titanic on it with `dispatch`, and a way to open clients.
struct Setup {
    endpoint: MemoryEndpoint,
    handle: TitanicHandle,
    titanic: JoinHandle<TitanicStats>,
}

impl Setup {
    async fn start(config: TitanicConfig, dispatch: impl Dispatch) -> Self {
        Self::start_on(MemoryStore::default(), config, dispatch).await
    }

    async fn start_on(store: impl Store, config: TitanicConfig, dispatch: impl Dispatch) -> Self {
        let (router, endpoint) = memory::router();
        let broker: Broker<MemoryRouter> = Broker::builder()
            .config(BrokerConfig::default())
            .build_on(vec![(EndpointRole::Shared, router)])
            .expect("a broker");
        tokio::spawn(broker.run(std::future::pending()));
        let titanic = Titanic::with_connector(endpoint.clone(), store, dispatch, config);
        let handle = titanic.handle();
        let titanic = tokio::spawn(async move {
            titanic
                .run(std::future::pending())
                .await
                .expect("titanic runs")
        });
        let setup = Self {
            endpoint,
            handle,
            titanic,
        };
        setup.ready().await;
        setup
    }

    fn client(&self) -> Tsp {
        Tsp(self.endpoint.connect().expect("broker up"))
    }

    /// Waits until the three services have workers, asking `mmi.service`.
    async fn ready(&self) {
        let mut c = self.client();
        let deadline = Instant::now() + PATIENCE;
        for service in ["titanic.request", "titanic.reply", "titanic.close"] {
            while c.call("mmi.service", vec![f(service)]).await != [f("200")] {
                assert!(Instant::now() < deadline, "{service} never registered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Waits until `check` holds on the running server's stats.
    async fn until(&self, what: &str, check: impl Fn(&TitanicStats) -> bool) -> TitanicStats {
        support::stats_until(&self.handle, PATIENCE, what, check).await
    }

    async fn stop(self) -> TitanicStats {
        self.handle.shutdown();
        let stats = self.titanic.await.expect("titanic ended");
        assert!(self.handle.is_stopped());
        assert_eq!(self.handle.stats().await, None);
        stats
    }
}

fn config() -> TitanicConfig {
    TitanicConfig::default()
        .worker(WorkerConfig::default().concurrency(8))
        .core(CoreConfig::default().backoff(Duration::from_secs(1), Duration::from_secs(30)))
}

/// A dispatch that answers `[echoed, body...]`.
fn echo() -> impl Dispatch {
    dispatch_fn(|_service, mut body: Vec<Bytes>| async move {
        body.insert(0, f("echoed"));
        Ok::<_, BoxError>(body)
    })
}

#[tokio::test(start_paused = true)]
async fn a_failing_service_backs_off_doubling_and_is_served_once_it_answers() {
    // Each attempt's time; the first three fail.
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = attempts.clone();
    let dispatch = dispatch_fn(move |_service, mut body: Vec<Bytes>| {
        let seen = seen.clone();
        async move {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                seen.len()
            };
            if n <= 3 {
                return Err::<Vec<Bytes>, BoxError>("no worker".into());
            }
            body.insert(0, f("echoed"));
            Ok(body)
        }
    });
    // Questions are held long enough to see the reply arrive.
    let setup = Setup::start(config().reply_wait(Duration::from_secs(60)), dispatch).await;
    let mut c = setup.client();
    let uuid = c.submit("flaky", "hello").await;
    assert_eq!(c.reply(uuid).await, [f("200"), f("echoed"), f("hello")]);
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 4);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s doubling: each gap is the backoff (commits take no virtual time).
    assert_eq!(
        gaps,
        [1, 2, 4].map(Duration::from_secs),
        "backoff between attempts"
    );
    let stats = setup.stop().await;
    assert_eq!(
        (stats.dispatched, stats.failed, stats.replied),
        (4, 3, 1),
        "{stats:?}"
    );
    // The last attempt waited the three backoffs since the submit.
    assert_eq!(
        (stats.queue_wait.count, stats.queue_wait.max),
        (4, Duration::from_secs(7)),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_is_forgotten_once_its_retention_has_passed() {
    let retention = Duration::from_secs(3600);
    let cfg = config();
    let setup = Setup::start(cfg.core(cfg.core.retention(retention)), echo()).await;
    let mut c = setup.client();
    let uuid = c.submit("echo", "kept").await;
    assert_eq!(c.reply(uuid).await, [f("200"), f("echoed"), f("kept")]);
    let stored_at = Instant::now();
    tokio::time::sleep_until(stored_at + retention - Duration::from_secs(1)).await;
    assert_eq!(c.reply(uuid).await, [f("200"), f("echoed"), f("kept")]);
    tokio::time::sleep_until(stored_at + retention + Duration::from_secs(1)).await;
    assert_eq!(c.reply(uuid).await, [f("400")], "forgotten");
    let stats = setup.stop().await;
    assert_eq!(stats.stored, 0, "{stats:?}");
    // The submit, the reply and the removal.
    assert_eq!(stats.writes, 3, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_held_question_is_answered_as_soon_as_the_reply_is_stored() {
    let gate = Arc::new(Notify::new());
    let open = gate.clone();
    let dispatch = dispatch_fn(move |_service, mut body: Vec<Bytes>| {
        let open = open.clone();
        async move {
            open.notified().await;
            body.insert(0, f("echoed"));
            Ok::<_, BoxError>(body)
        }
    });
    let wait = Duration::from_secs(30);
    let setup = Setup::start(config().reply_wait(wait), dispatch).await;
    let mut c = setup.client();
    let uuid = c.submit("slow", "body").await;
    let asked = Instant::now();
    let question = tokio::spawn(async move { c.reply(uuid).await });
    setup
        .until("a question held and the request in flight", |s| {
            s.held == 1 && s.in_flight == 1
        })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!question.is_finished(), "held while the request is pending");
    gate.notify_one();
    let answer = question.await.unwrap();
    assert_eq!(answer, [f("200"), f("echoed"), f("body")]);
    assert!(asked.elapsed() < wait, "answered before the wait ran out");
    let stats = setup.stop().await;
    assert_eq!((stats.held, stats.replied), (0, 1), "{stats:?}");
    assert_eq!(stats.reply.count, 1, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_held_question_is_answered_300_after_the_reply_wait() {
    // A service that never answers.
    let dispatch = dispatch_fn(|_service, _body: Vec<Bytes>| async move {
        std::future::pending::<()>().await;
        Ok::<Vec<Bytes>, BoxError>(vec![])
    });
    let wait = Duration::from_secs(7);
    let setup = Setup::start(config().reply_wait(wait), dispatch).await;
    let mut c = setup.client();
    let uuid = c.submit("silent", "body").await;
    let asked = Instant::now();
    assert_eq!(c.reply(uuid).await, [f("300")]);
    assert_eq!(asked.elapsed(), wait, "held exactly the reply wait");
    // Closing answers a held question 400: the request is gone.
    let question = {
        let mut c = setup.client();
        tokio::spawn(async move { c.reply(uuid).await })
    };
    setup.until("a question held", |s| s.held == 1).await;
    assert_eq!(
        c.call("titanic.close", vec![uuid.frame()]).await,
        [f("200")]
    );
    assert_eq!(question.await.unwrap(), [f("400")]);
    let stats = setup.stop().await;
    assert_eq!(
        (stats.accepted, stats.closed, stats.stored),
        (1, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_answers_held_questions_300_and_reports_what_was_done() {
    let dispatch = dispatch_fn(|_service, _body: Vec<Bytes>| async move {
        std::future::pending::<()>().await;
        Ok::<Vec<Bytes>, BoxError>(vec![])
    });
    let setup = Setup::start(config().reply_wait(Duration::from_secs(60)), dispatch).await;
    let mut c = setup.client();
    let uuid = c.submit("silent", "body").await;
    let question = tokio::spawn(async move { c.reply(uuid).await });
    let running = setup
        .until("a question held", |s| s.held == 1 && s.in_flight == 1)
        .await;
    assert_eq!((running.accepted, running.submit.count), (1, 1));
    assert!(running.body_bytes > 0, "the body is kept in memory");
    let asked = Instant::now();
    let stats = setup.stop().await;
    assert_eq!(question.await.unwrap(), [f("300")]);
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "not held to the end"
    );
    // The request stays stored, sent again at the next start.
    assert_eq!((stats.accepted, stats.stored), (1, 1), "{stats:?}");
}

/// The memory store, failing every commit while `fail` is set.
#[derive(Debug, Default)]
struct Failing {
    store: MemoryStore,
    fail: Arc<AtomicBool>,
}

impl Store for Failing {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(StoreError::Redb(std::io::Error::other("disk full").into()));
        }
        self.store.commit(ops)
    }

    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError> {
        self.store.get(uuid)
    }

    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError> {
        self.store.load()
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_that_fails_is_answered_500_and_nothing_is_kept() {
    let store = Failing::default();
    let fail = store.fail.clone();
    let setup = Setup::start_on(store, config(), echo()).await;
    let mut c = setup.client();
    fail.store(true, Ordering::Relaxed);
    let answer = c.call("titanic.request", vec![f("echo"), f("lost")]).await;
    assert_eq!(answer, [f("500")]);
    // A close is answered at once; its removal is written after, and nobody waits on it.
    let uuid = Uuid([7; 16]);
    assert_eq!(
        c.call("titanic.close", vec![uuid.frame()]).await,
        [f("200")]
    );
    let stats = setup.until("the refusal counted", |s| s.refused == 1).await;
    assert_eq!((stats.accepted, stats.stored, stats.body_bytes), (0, 0, 0));
    fail.store(false, Ordering::Relaxed);
    let uuid = c.submit("echo", "kept").await;
    assert_eq!(c.reply(uuid).await, [f("200"), f("echoed"), f("kept")]);
    // The refused request may have been dispatched while its write was failing: its reply
    // is not stored.
    let stats = setup.stop().await;
    assert_eq!((stats.replied, stats.stored), (1, 1), "{stats:?}");
}

/// Each commit a [`Recording`] store saw: whether it was durable, and its writes.
type Commits = Arc<Mutex<Vec<(bool, Vec<Op>)>>>;

/// A memory store that records each commit.
#[derive(Default)]
struct Recording {
    store: MemoryStore,
    commits: Commits,
}

impl Store for Recording {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.commits.lock().unwrap().push((true, ops.to_vec()));
        self.store.commit(ops)
    }

    fn commit_deferred(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.commits.lock().unwrap().push((false, ops.to_vec()));
        self.store.commit(ops)
    }

    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError> {
        self.store.get(uuid)
    }

    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError> {
        self.store.load()
    }
}

/// Waits (in virtual time) until the commits recorded satisfy `check`.
async fn commits_until(
    commits: &Mutex<Vec<(bool, Vec<Op>)>>,
    what: &str,
    check: impl Fn(&[(bool, Vec<Op>)]) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !check(&commits.lock().unwrap()) {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_close_is_answered_at_once_and_made_durable_by_the_next_durable_commit() {
    let store = Recording::default();
    let commits = store.commits.clone();
    let setup = Setup::start_on(store, config(), echo()).await;
    let mut c = setup.client();
    let uuid = c.submit("echo", "body").await;
    assert_eq!(c.reply(uuid).await, [f("200"), f("echoed"), f("body")]);
    assert_eq!(
        c.call("titanic.close", vec![uuid.frame()]).await,
        [f("200")]
    );
    // The removal goes without waiting for the disk, then a durable commit with no writes
    // follows it (the sync), without any other traffic.
    let removal = |c: &(bool, Vec<Op>)| !c.0 && c.1 == [Op::Remove(uuid)];
    commits_until(&commits, "the removal, then a sync", |cs| {
        cs.iter()
            .position(removal)
            .is_some_and(|i| cs[i + 1..].iter().any(|c| c.0 && c.1.is_empty()))
    })
    .await;
    // The request and its reply were durable writes.
    let all = commits.lock().unwrap().clone();
    assert!(all
        .iter()
        .all(|(durable, ops)| *durable || ops.iter().all(|op| matches!(op, Op::Remove(_)))));
    // A close just before stopping is made durable by the stop.
    let other = c.submit("echo", "other").await;
    assert_eq!(c.reply(other).await[0], f("200"));
    assert_eq!(
        c.call("titanic.close", vec![other.frame()]).await,
        [f("200")]
    );
    let before = commits.lock().unwrap().len();
    let stats = setup.stop().await;
    assert_eq!((stats.closed, stats.stored), (2, 0), "{stats:?}");
    let all = commits.lock().unwrap();
    let last_removal = all
        .iter()
        .rposition(|c| !c.0 && c.1 == [Op::Remove(other)])
        .expect("the second removal");
    assert!(
        all[last_removal + 1..].iter().any(|c| c.0),
        "no durable commit after the last removal ({} commits before the stop, {:?})",
        before,
        &all[last_removal..]
    );
}

/// A memory store whose durable commits of new requests wait for the dispatch of what they
/// write, to show that a request is sent while its write is being made.
struct Gate {
    store: MemoryStore,
    dispatched: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Store for Gate {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.iter().any(|op| matches!(op, Op::Request(..))) {
            // Bounded: a request dispatched only after its write would leave the write
            // failing here, and the submit answered 500.
            let waited = self
                .dispatched
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(20));
            if waited.is_err() {
                return Err(StoreError::Redb(
                    std::io::Error::other("not dispatched while being written").into(),
                ));
            }
        }
        self.store.commit(ops)
    }

    fn get(&self, uuid: &Uuid) -> Result<Option<Entry>, StoreError> {
        self.store.get(uuid)
    }

    fn load(&self) -> Result<Vec<(Uuid, Entry)>, StoreError> {
        self.store.load()
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_is_dispatched_while_its_write_is_being_made() {
    let (sent, dispatched) = std::sync::mpsc::channel();
    let sent = Arc::new(Mutex::new(sent));
    let dispatch = dispatch_fn(move |_service, body: Vec<Bytes>| {
        let sent = sent.clone();
        async move {
            let _ = sent.lock().unwrap().send(());
            let mut reply = vec![f("echoed")];
            reply.extend(body);
            Ok::<Vec<Bytes>, BoxError>(reply)
        }
    });
    let store = Gate {
        store: MemoryStore::default(),
        dispatched: std::sync::Mutex::new(dispatched),
    };
    let setup = Setup::start_on(store, config(), dispatch).await;
    let mut c = setup.client();
    let uuid = c.submit("echo", "early").await;
    assert_eq!(c.reply(uuid).await, [f("200"), f("echoed"), f("early")]);
    let stats = setup.stop().await;
    assert_eq!((stats.accepted, stats.replied, stats.refused), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn bodies_past_the_memory_bound_are_read_from_the_store() {
    // None kept in memory: the dispatch reads the request, `titanic.reply` the reply.
    let cfg = config().reply_wait(Duration::ZERO);
    let setup = Setup::start(cfg.core(cfg.core.max_body_bytes(0)), echo()).await;
    let mut c = setup.client();
    let uuid = c.submit("echo", "from the store").await;
    let stats = setup.until("the reply stored", |s| s.replied == 1).await;
    assert_eq!(stats.body_bytes, 0);
    assert_eq!(
        c.reply(uuid).await,
        [f("200"), f("echoed"), f("from the store")]
    );
    setup.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_future_stops_the_server() {
    let setup = Setup::start(config(), echo()).await;
    setup.titanic.abort();
    let _ = setup.titanic.await;
    let deadline = Instant::now() + PATIENCE;
    while !setup.handle.is_stopped() {
        assert!(Instant::now() < deadline, "the owner still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(setup.handle.stats().await, None);
}
