//! Lazy Pirate server: a REP echo server that, after a few requests, simulates a crash (it exits)
//! or CPU overload (it answers late) at random, as the Guide's lpserver.c does: from the 4th
//! request on (`cycles > 3`, counted before the check), a crash with odds 1/3 (`randof (3) == 0`),
//! otherwise an overload of 2 s with odds 1/3; then 1 s of work and the echo.
//!
//! Run: `cargo run -p majordomo-examples --example lpserver -- tcp://127.0.0.1:5555`, then the
//! `lpclient` example.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeromq::{RepSocket, Socket, SocketRecv, SocketSend};

/// A small xorshift generator: the simulation needs no cryptographic randomness.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = majordomo_examples::endpoint_arg();
    let mut server = RepSocket::new();
    server.bind(&endpoint).await?;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 | 1;
    let mut dice = Dice(seed);
    let mut cycles = 0;
    loop {
        let request = server.recv().await?;
        cycles += 1;
        // lpserver.c: `if (cycles > 3 && randof (3) == 0)` crash, `else if` the same, overload.
        if cycles > 3 && dice.roll(3) == 0 {
            println!("I: simulating a crash");
            return Ok(());
        }
        if cycles > 3 && dice.roll(3) == 0 {
            println!("I: simulating CPU overload");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let text = request
            .get(0)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default();
        println!("I: normal request ({text})");
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.send(request).await?;
    }
}
