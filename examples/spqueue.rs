//! Simple Pirate queue: clients on the frontend, REQ workers that announce READY on the backend,
//! requests to the least-recently-used worker.
//!
//! Run: `cargo run -p majordomo-examples --example spqueue`, then some `spworker`s and an
//! `lpclient`. (The `majordomo spqueue` command is the same queue with options.)

use majordomo_pirate::{Queue, QueueConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let queue = Queue::bind(
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:5556",
        QueueConfig::simple(),
    )
    .await?;
    queue
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
