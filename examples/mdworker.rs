//! Majordomo worker: serves `echo`, heartbeating the broker and reconnecting if it goes away.
//! Ctrl-C sends DISCONNECT and exits.
//!
//! Run: `cargo run --release -p majordomo-cli -- broker`, then
//! `cargo run --release -p majordomo-examples --example mdworker -- tcp://127.0.0.1:5555`.

use majordomo_worker::{handler_fn, Worker, WorkerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let endpoint = majordomo_examples::endpoint_arg();
    let worker = Worker::new(endpoint, "echo", WorkerConfig::default());
    worker
        .run(handler_fn(|body| async move { Ok(body) }), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
