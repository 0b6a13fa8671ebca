//! Asynchronous Majordomo client (the Guide's mdclient2): sends all requests to `echo` first,
//! then collects the replies.
//!
//! Run: `cargo run --release -p majordomo-cli -- broker` and
//! `cargo run --release -p majordomo-examples --example mdworker`, then
//! `cargo run --release -p majordomo-examples --example mdclient2 -- tcp://127.0.0.1:5555 10000`.

use bytes::Bytes;
use majordomo_client::{AsyncClient, ClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let endpoint = majordomo_examples::endpoint_arg();
    let count: usize = std::env::args().nth(2).map_or(Ok(10_000), |n| n.parse())?;
    let mut client = AsyncClient::connect(&endpoint, ClientConfig::default()).await?;
    let started = std::time::Instant::now();
    for _ in 0..count {
        client
            .send("echo", vec![Bytes::from_static(b"Hello world")])
            .await?;
    }
    let mut replies = 0;
    while replies < count {
        match client.recv().await {
            Ok(_) => replies += 1,
            Err(error) => {
                eprintln!("E: {error}");
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{replies} replies received in {secs:.2} s ({:.0}/s)",
        replies as f64 / secs
    );
    Ok(())
}
