//! Binary Star pairs of brokers over in-memory sockets and an in-memory state link, on paused
//! tokio time: the pair's heartbeats, the peer's expiry and the client vote play out in virtual
//! seconds, deterministically, with the brokers' state read through `Broker::pair_status`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use majordomo_broker::pair::PairStatus;
use majordomo_broker::{
    Broker, BrokerError, BrokerHandle, BrokerStats, EndpointRole, PairFatal, PairRole, PairState,
};
use majordomo_client::{Client, ClientConfig};
use majordomo_rt::memory::{self, MemoryEndpoint, MemoryLink, MemoryRouter};
use majordomo_rt::transport::Either;
use majordomo_worker::{handler_fn, Worker, WorkerConfig};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Virtual time a test may wait for anything; never an expected duration.
const VIRTUAL_PATIENCE: Duration = Duration::from_secs(600);

type Socket = Either<MemoryRouter, MemoryLink>;
type BrokerTask = JoinHandle<Result<BrokerStats, BrokerError>>;

/// One broker of a pair: its endpoint, handle, pair status and task.
struct Member {
    endpoint: MemoryEndpoint,
    handle: BrokerHandle,
    status: watch::Receiver<PairStatus>,
    task: BrokerTask,
}

/// Stops a future from being polled while set: a process frozen (SIGSTOP, a paused VM) as the
/// rest of the world's time goes on.
#[derive(Clone, Default)]
struct Freeze(Arc<(AtomicBool, Notify)>);

impl Freeze {
    fn set(&self, frozen: bool) {
        self.0 .0.store(frozen, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    async fn run<F: std::future::Future>(self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        loop {
            let thawed = self.0 .1.notified();
            tokio::select! {
                out = &mut future, if !self.0 .0.load(Ordering::SeqCst) => return out,
                () = thawed => {}
            }
        }
    }
}

impl Member {
    fn start(role: PairRole, link: MemoryLink) -> Result<Self> {
        Self::start_with(role, link, Freeze::default())
    }

    /// As [`Member::start`], the broker frozen whenever `freeze` says so.
    fn start_with(role: PairRole, link: MemoryLink, freeze: Freeze) -> Result<Self> {
        let (router, endpoint) = memory::router();
        let broker: Broker<Socket> = Broker::builder()
            .binary_star(role, "unused", "unused")
            .build_pair_on(
                vec![(EndpointRole::Shared, Either::Left(router))],
                Either::Right(link),
            )?;
        let status = broker.pair_status().context("a pair member")?;
        let handle = broker.handle();
        let task = tokio::spawn(freeze.run(broker.run(std::future::pending())));
        // An echo worker registers with every member, whatever its state.
        let worker = Worker::with_connector(endpoint.clone(), "echo", WorkerConfig::default());
        tokio::spawn(worker.run(
            handler_fn(|body| async move { Ok(body) }),
            std::future::pending(),
        ));
        Ok(Self {
            endpoint,
            handle,
            status,
            task,
        })
    }

    /// Waits (virtual time, bounded) until the pair status satisfies `check`.
    async fn until(&mut self, check: impl Fn(&PairStatus) -> bool) -> Result<PairStatus> {
        let status = tokio::time::timeout(VIRTUAL_PATIENCE, self.status.wait_for(check))
            .await
            .context("pair status never reached")??;
        Ok(status.clone())
    }

    /// Waits until the broker has its echo worker.
    async fn with_worker(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + VIRTUAL_PATIENCE;
        while self.handle.stats().await.context("running")?.workers == 0 {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no worker");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn client(&self, attempts: u32) -> Client<MemoryEndpoint> {
        Client::with_connector(
            self.endpoint.clone(),
            ClientConfig::default()
                .timeout(Duration::from_millis(500))
                .attempts(attempts),
        )
    }
}

/// A primary and a backup linked to each other, the primary active and the backup passive.
async fn pair() -> Result<(Member, Member, memory::LinkSwitch)> {
    pair_with(Freeze::default()).await
}

/// As [`pair`], the primary frozen whenever `freeze` says so.
async fn pair_with(freeze: Freeze) -> Result<(Member, Member, memory::LinkSwitch)> {
    let (a, b, switch) = memory::link();
    let mut primary = Member::start_with(PairRole::Primary, a, freeze)?;
    let mut backup = Member::start(PairRole::Backup, b)?;
    primary.until(|s| s.state == PairState::Active).await?;
    backup
        .until(|s| s.state == PairState::Passive && s.peer_state == Some(PairState::Active))
        .await?;
    primary.with_worker().await?;
    backup.with_worker().await?;
    Ok((primary, backup, switch))
}

#[tokio::test(start_paused = true)]
async fn the_passive_broker_answers_mmi_drops_requests_and_takes_over_on_a_vote() -> Result<()> {
    let (primary, mut backup, _switch) = pair().await?;
    let echo = || vec![Bytes::from_static(b"hi")];
    // The passive broker drops a client request, and answers mmi.service for its worker.
    assert!(backup.client(1).request("echo", echo()).await.is_err());
    let service = backup
        .client(1)
        .request("mmi.service", vec![Bytes::from_static(b"echo")])
        .await?;
    assert_eq!(service, [Bytes::from_static(b"200")]);
    assert_eq!(backup.status.borrow().dropped, 1);
    assert_eq!(primary.client(1).request("echo", echo()).await?, echo());

    // The primary crashes: within its expiry a request at the backup is dropped; a retry after
    // it is the vote, and the backup answers.
    primary.task.abort();
    let reply = backup.client(20).request("echo", echo()).await?;
    assert_eq!(reply, echo());
    let status = backup.until(|s| s.state == PairState::Active).await?;
    assert_eq!(status.peer_state, None);
    assert!(status.dropped >= 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_active_broker_draining_hands_over_to_the_passive_one_at_once() -> Result<()> {
    let (mut primary, mut backup, _switch) = pair().await?;
    let echo = || vec![Bytes::from_static(b"hi")];
    primary.handle.drain();
    // No client asks the backup anything: the primary's word is enough, and neither stops.
    backup.until(|s| s.state == PairState::Active).await?;
    assert_eq!(backup.client(1).request("echo", echo()).await?, echo());
    // The draining primary takes no new request, and shows it is no longer active.
    assert!(primary.client(1).request("echo", echo()).await.is_err());
    primary.handle.drained().await;
    assert_eq!(primary.status.borrow().state, PairState::Primary);
    for member in [&mut primary, &mut backup] {
        assert_eq!(member.status.borrow().fatal, None);
        assert!(!member.task.is_finished());
    }
    Ok(())
}

/// The active primary drains while the backup, just started, has not yet heard it: it is first
/// told the primary is active, becomes passive, and is then handed over to. Told "primary"
/// while still a backup, it would have stayed a backup, which never serves.
#[tokio::test(start_paused = true)]
async fn a_draining_broker_hands_over_to_a_backup_that_was_not_yet_passive() -> Result<()> {
    let (a, b, switch) = memory::link();
    let mut primary = Member::start(PairRole::Primary, a)?;
    // Alone, the primary becomes active on a vote once it has heard no peer for its expiry.
    switch.cut();
    let mut backup = Member::start(PairRole::Backup, b)?;
    primary.with_worker().await?;
    let echo = || vec![Bytes::from_static(b"hi")];
    assert_eq!(primary.client(20).request("echo", echo()).await?, echo());
    primary.until(|s| s.state == PairState::Active).await?;
    assert_eq!(backup.status.borrow().state, PairState::Backup);
    primary.handle.drain();
    switch.restore();
    backup.until(|s| s.state == PairState::Active).await?;
    primary
        .until(|s| s.state == PairState::Primary && s.fatal.is_none())
        .await?;
    backup.with_worker().await?;
    assert_eq!(backup.client(1).request("echo", echo()).await?, echo());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_a_vote_a_silent_peer_changes_nothing() -> Result<()> {
    let (mut primary, mut backup, switch) = pair().await?;
    switch.cut();
    backup.until(|s| s.peer_state.is_none()).await?;
    primary.until(|s| s.peer_state.is_none()).await?;
    // No client at the backup: it stays passive however long the link is down.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(backup.status.borrow().state, PairState::Passive);
    switch.restore();
    backup
        .until(|s| s.state == PairState::Passive && s.peer_state == Some(PairState::Active))
        .await?;
    assert_eq!(primary.status.borrow().state, PairState::Active);
    Ok(())
}

/// The active broker frozen past its peer's expiry while a client's vote makes the backup
/// active: back, the old active broker stops on hearing the new one, which goes on serving.
/// Had the old one said "active" first, both would have stopped.
#[tokio::test(start_paused = true)]
async fn an_active_broker_frozen_while_its_peer_took_over_stops_alone() -> Result<()> {
    let freeze = Freeze::default();
    let (mut primary, mut backup, switch) = pair_with(freeze.clone()).await?;
    freeze.set(true);
    // The link down too while frozen: back, the primary finds no word of the takeover
    // waiting, and hears it only at the backup's next heartbeat.
    switch.cut();
    backup.until(|s| s.peer_state.is_none()).await?;
    let echo = || vec![Bytes::from_static(b"vote")];
    assert_eq!(backup.client(1).request("echo", echo()).await?, echo());
    backup.until(|s| s.state == PairState::Active).await?;
    freeze.set(false);
    switch.restore();
    let stopped = tokio::time::timeout(VIRTUAL_PATIENCE, &mut primary.task)
        .await
        .context("the old active broker never stopped")??;
    assert!(
        matches!(stopped, Err(BrokerError::Pair(PairFatal::DualActive))),
        "{stopped:?}"
    );
    // A few heartbeats on, the new active broker is still serving.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!backup.task.is_finished());
    assert_eq!(backup.status.borrow().fatal, None);
    assert_eq!(backup.client(1).request("echo", echo()).await?, echo());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_split_brain_stops_the_brokers_with_an_error() -> Result<()> {
    let (primary, mut backup, switch) = pair().await?;
    switch.cut();
    backup.until(|s| s.peer_state.is_none()).await?;
    let reply = backup
        .client(1)
        .request("echo", vec![Bytes::from_static(b"vote")])
        .await?;
    assert_eq!(reply, [Bytes::from_static(b"vote")]);
    backup.until(|s| s.state == PairState::Active).await?;
    switch.restore();
    let (mut a, mut b) = (primary.task, backup.task);
    let first = tokio::time::timeout(VIRTUAL_PATIENCE, async {
        tokio::select! {
            ended = &mut a => ended,
            ended = &mut b => ended,
        }
    })
    .await
    .context("no broker stopped")??;
    assert!(
        matches!(first, Err(BrokerError::Pair(PairFatal::DualActive))),
        "{first:?}"
    );
    Ok(())
}

/// A `MuxClient` of both brokers of a pair: the passive one, which drops client requests, costs
/// it one timeout and is then sent nothing while the active one answers; when the active one
/// crashes, the requests go to the other, whose vote makes it active, and none is lost.
#[tokio::test(start_paused = true)]
async fn a_mux_client_of_the_pair_learns_the_passive_broker_and_fails_over_to_it() -> Result<()> {
    use majordomo_client::MuxClient;
    let (primary, mut backup, _switch) = pair().await?;
    let client = MuxClient::with_connectors(
        [primary.endpoint.clone(), backup.endpoint.clone()],
        ClientConfig::default()
            .timeout(Duration::from_millis(500))
            .attempts(10),
    );
    for n in 0..100u32 {
        let body = vec![Bytes::from(n.to_string())];
        assert_eq!(client.request("echo", body.clone()).await?, body);
    }
    // Sent to the passive broker at most while it was not yet known to drop them.
    let dropped_at_the_backup = backup.status.borrow().dropped;
    assert!(dropped_at_the_backup <= 1, "{dropped_at_the_backup}");
    primary.task.abort();
    let calls: Vec<_> = (0..100u32)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = vec![Bytes::from(n.to_string())];
                (body.clone(), client.request("echo", body).await)
            })
        })
        .collect();
    for call in calls {
        let (body, reply) = call.await?;
        assert_eq!(reply?, body);
    }
    backup.until(|s| s.state == PairState::Active).await?;
    Ok(())
}
