//! The echo service: `majordomo worker echo` serves it, and the benchmark runs it in process
//! with `--in-process-workers`.

use bytes::Bytes;
use majordomo_worker::{stream_handler_fn, BoxError, Responder, StreamHandler};

/// Echoes the request `parts` times as parts, then as the last part (0: a plain echo).
pub fn echo_in_parts(parts: usize) -> impl StreamHandler {
    stream_handler_fn(
        move |body: Vec<Bytes>, mut responder: Responder| async move {
            for _ in 0..parts {
                responder.send(body.clone()).await?;
            }
            Ok::<_, BoxError>(body)
        },
    )
}
