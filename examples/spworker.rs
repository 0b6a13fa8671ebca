//! Simple Pirate worker: a REQ socket that announces READY, then echoes requests, and after a few
//! cycles simulates a crash or overload like the Guide's spworker: from the 4th request, a crash
//! with odds 1/5, otherwise CPU overload (3 s) with odds 1/5. It sets a random identity
//! (`XXXX-XXXX`, as the Guide's does), so the identity it prints is the one the queue sees.
//!
//! Run: `cargo run -p majordomo-examples --example spqueue`, then
//! `cargo run -p majordomo-examples --example spworker -- tcp://127.0.0.1:5556`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use zeromq::util::PeerIdentity;
use zeromq::{ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// A small xorshift generator: the simulation needs no cryptographic randomness.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn roll(&mut self, sides: u64) -> u64 {
        self.next() % sides
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:5556".to_owned());
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64
        ^ u64::from(std::process::id()) << 32;
    let mut dice = Dice(seed | 1);
    // The Guide sets a random identity "to make tracing easier": the queue's ROUTER sees it.
    let identity = format!("{:04X}-{:04X}", dice.roll(0x10000), dice.roll(0x10000));
    let mut options = SocketOptions::default();
    options.peer_identity(PeerIdentity::try_from(identity.as_bytes())?);
    let mut worker = ReqSocket::with_options(options);
    worker.connect(&endpoint).await?;
    println!("I: ({identity}) worker ready");
    // Tell the queue we're ready for work: 6/PPP READY, 0x01.
    worker
        .send(ZmqMessage::from(Bytes::from_static(&[0x01])))
        .await?;
    let mut cycles = 0u32;
    loop {
        // [client address, empty, request]
        let request = worker.recv().await?;
        cycles += 1;
        if cycles > 3 && dice.roll(5) == 0 {
            println!("I: ({identity}) simulating a crash");
            return Ok(());
        }
        if cycles > 3 && dice.roll(5) == 0 {
            println!("I: ({identity}) simulating CPU overload");
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        println!("I: ({identity}) normal reply");
        tokio::time::sleep(Duration::from_secs(1)).await;
        worker.send(request).await?;
    }
}
