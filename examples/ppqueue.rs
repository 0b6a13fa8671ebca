//! Paranoid Pirate queue (6/PPP): like the Simple Pirate queue, plus heartbeats both ways and
//! expiry of silent workers.
//!
//! Run: `cargo run -p majordomo-examples --example ppqueue`, then some `ppworker`s and an
//! `lpclient`. (The `majordomo ppqueue` command is the same queue with options.)

use majordomo_pirate::{Queue, QueueConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let queue = Queue::bind(
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:5556",
        QueueConfig::paranoid(),
    )
    .await?;
    queue
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
