//! Simple Pirate worker: a REQ socket that announces READY, then echoes requests, and after a few
//! cycles simulates a crash or overload like the Guide's.
//!
//! Run: `cargo run -p majordomo-examples --example spqueue`, then
//! `cargo run -p majordomo-examples --example spworker -- tcp://127.0.0.1:5556`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use zeromq::{ReqSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:5556".to_owned());
    let mut worker = ReqSocket::new();
    worker.connect(&endpoint).await?;
    let identity = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    println!("I: ({identity:08X}) worker ready");
    // Tell the queue we're ready for work: 6/PPP READY, 0x01.
    worker
        .send(ZmqMessage::from(Bytes::from_static(&[0x01])))
        .await?;
    let mut cycles = 0u32;
    loop {
        // [client address, empty, request]
        let request = worker.recv().await?;
        cycles += 1;
        let roll = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos() % 5;
        if cycles > 3 && roll == 0 {
            println!("I: ({identity:08X}) simulating a crash");
            return Ok(());
        }
        if cycles > 3 && roll == 1 {
            println!("I: ({identity:08X}) simulating CPU overload");
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        println!("I: ({identity:08X}) normal reply");
        tokio::time::sleep(Duration::from_secs(1)).await;
        worker.send(request).await?;
    }
}
