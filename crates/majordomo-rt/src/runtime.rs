//! The tokio runtime a server or peer process runs on, chosen by a thread count.

/// Builds a runtime with every driver enabled: `threads == 1` gives a single-threaded runtime
/// (the measured fastest for the broker, the queues and the workers, each one task owning its
/// state), `0` a multi-threaded one with a thread per core, and any other number a
/// multi-threaded one with that many threads.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_count_picks_the_runtime() {
        use tokio::runtime::RuntimeFlavor;
        assert_eq!(
            build(1).unwrap().handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        let two = build(2).unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
        assert_eq!(
            build(0).unwrap().handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
    }
}
