//! Majordomo client: sends many "Hello world" requests to the `echo` service, one at a time, with
//! Lazy Pirate retries, and counts the replies.
//!
//! Run: `cargo run --release -p majordomo-cli -- broker` and
//! `cargo run --release -p majordomo-examples --example mdworker`, then
//! `cargo run --release -p majordomo-examples --example mdclient -- tcp://127.0.0.1:5555 10000`.

use bytes::Bytes;
use majordomo_client::{Client, ClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let endpoint = majordomo_examples::endpoint_arg();
    let count: usize = std::env::args().nth(2).map_or(Ok(10_000), |n| n.parse())?;
    let client = Client::new(endpoint, ClientConfig::default());
    let started = std::time::Instant::now();
    let mut replies = 0;
    for _ in 0..count {
        match client
            .request("echo", vec![Bytes::from_static(b"Hello world")])
            .await
        {
            Ok(_) => replies += 1,
            Err(error) => {
                eprintln!("E: {error}");
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{replies} requests/replies processed in {secs:.2} s ({:.0}/s)",
        replies as f64 / secs
    );
    Ok(())
}
