//! Simple Pirate queue: clients on the frontend, REQ workers that announce READY on the backend,
//! requests to the least-recently-used worker.
//!
//! Run: `cargo run -p majordomo-examples --example spqueue -- [FRONTEND [BACKEND]]` (clients on
//! `tcp://127.0.0.1:5555`, workers on `tcp://127.0.0.1:5556` unless given), then some
//! `spworker`s and an `lpclient`. (The `majordomo spqueue` command is the same queue with
//! options.)

use majordomo_pirate::{Queue, QueueConfig};

/// The workers' endpoint unless given another as the second argument.
const DEFAULT_BACKEND: &str = "tcp://127.0.0.1:5556";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let frontend = majordomo_examples::endpoint_arg();
    let backend = std::env::args()
        .nth(2)
        .unwrap_or_else(|| DEFAULT_BACKEND.to_owned());
    let queue = Queue::bind(&frontend, &backend, QueueConfig::simple()).await?;
    queue
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
