//! Paranoid Pirate worker (6/PPP): echoes requests, heartbeats the queue, and reconnects with
//! backoff (1 s doubling to 32 s) when the queue goes silent. Stop and restart the queue to watch
//! it come back.
//!
//! Run: `cargo run -p majordomo-examples --example ppqueue`, then
//! `cargo run -p majordomo-examples --example ppworker -- tcp://127.0.0.1:5556`.

use majordomo_pirate::{PppWorker, PppWorkerConfig};
use majordomo_worker::handler_fn;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:5556".to_owned());
    PppWorker::new(endpoint, PppWorkerConfig::default())
        .run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
