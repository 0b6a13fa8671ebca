//! MMI lookup: asks the broker whether the `echo` service has a live worker (8/MMI
//! `mmi.service`) and prints the answer: `200` found, `404` not found.
//!
//! Run: `cargo run --release -p majordomo-cli -- broker`, then
//! `cargo run --release -p majordomo-examples --example mmiecho -- tcp://127.0.0.1:5555`.

use bytes::Bytes;
use majordomo_client::{Client, ClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    majordomo_examples::init_logging();
    let client = Client::new(majordomo_examples::endpoint_arg(), ClientConfig::default());
    let reply = client
        .request("mmi.service", vec![Bytes::from_static(b"echo")])
        .await?;
    println!(
        "Lookup echo service: {}",
        String::from_utf8_lossy(&reply[0])
    );
    Ok(())
}
