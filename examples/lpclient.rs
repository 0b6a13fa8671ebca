//! Lazy Pirate client: numbered requests to a REQ/REP server, retrying on fresh sockets, and
//! abandoning when the server seems offline. A reply with the wrong sequence number is rejected.
//!
//! Run: `cargo run -p majordomo-examples --example lpserver` and, in another terminal,
//! `cargo run -p majordomo-examples --example lpclient`. Kill and restart the server to watch it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use majordomo_pirate::{LazyEvent, LazyPirate, LazyPirateConfig, LazyPirateError};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = majordomo_examples::endpoint_arg();
    println!("I: connecting to server…");
    let sequence = Arc::new(AtomicU64::new(0));
    let shown = sequence.clone();
    let mut client =
        LazyPirate::new(endpoint, LazyPirateConfig::default()).on_event(move |event| match event {
            LazyEvent::Retrying { .. } => {
                println!("W: no response from server, retrying…");
                println!(
                    "I: reconnecting and resending ({})",
                    shown.load(Ordering::Relaxed)
                );
            }
            LazyEvent::Rejected(reply) => println!("E: malformed reply from server: {reply:?}"),
        });
    loop {
        let seq = sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let request = vec![Bytes::from(seq.to_string())];
        let expected = seq.to_string();
        match client
            .request_with(request, |reply| {
                reply.first().is_some_and(|f| f == expected.as_bytes())
            })
            .await
        {
            Ok(_) => println!("I: server replied OK ({seq})"),
            Err(LazyPirateError::ServerOffline { .. }) => {
                println!("E: server seems to be offline, abandoning");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        }
    }
}
