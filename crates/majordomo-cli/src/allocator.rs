//! The C library's allocator, set for a server that holds many large messages at once.
//!
//! glibc's malloc gives a block of 128 KiB or more a mapping of its own, returned to the system
//! when the block is freed; but each such block freed raises that threshold to its size (up to
//! 32 MiB), and from then on blocks of that size come from its heaps, one per thread that
//! allocates. What is freed there stays in the process: with several threads each receiving,
//! storing and sending large bodies, the heaps keep every size each thread once needed.
//! Titanic, 60 requests of 15 MiB for services nobody serves, peaked at 460 MiB this way and
//! held 447 MiB after them; 600 requests of 1 MiB: 339 MiB, and 321 MiB after.
//!
//! A threshold that is set stays where it is set: [`fix_mmap_threshold`] sets it, unless the
//! operator set glibc's own `MALLOC_MMAP_THRESHOLD_` (or `glibc.malloc.mmap_threshold` in
//! `GLIBC_TUNABLES`), which glibc has then applied itself. The cost is a mapping, and its pages
//! faulted in, for each block past the threshold, where a heap would have reused one: the
//! broker with a threshold of 256 KiB took 2.3 times the CPU per request of 1 MiB. So only
//! Titanic sets it, at 4 MiB, where a body's other costs (its copies, its write to the store)
//! are of the same order; the broker bounds what it holds by its own counts.

/// Where [`fix_mmap_threshold`] left the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MmapThreshold {
    /// Set to this many bytes.
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    Fixed(usize),
    /// Left as the operator set it through glibc's environment.
    Operator,
    /// Not glibc: nothing to set (musl, for one, maps large blocks and returns them as freed).
    #[cfg_attr(all(target_os = "linux", target_env = "gnu"), allow(dead_code))]
    Unsupported,
    /// glibc refused the value.
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    Refused(usize),
}

/// The environment variables through which the operator sets the threshold themselves.
fn set_by_operator(var: impl Fn(&str) -> Option<String>) -> bool {
    var("MALLOC_MMAP_THRESHOLD_").is_some()
        || var("GLIBC_TUNABLES").is_some_and(|t| t.contains("malloc.mmap_threshold"))
}

/// Fixes the size past which a block gets a mapping of its own, returned to the system when it
/// is freed, at `bytes` (see the module docs); logs what was done.
pub(crate) fn fix_mmap_threshold(bytes: usize) -> MmapThreshold {
    let outcome = if set_by_operator(|name| std::env::var(name).ok()) {
        MmapThreshold::Operator
    } else {
        set(bytes)
    };
    match outcome {
        MmapThreshold::Fixed(bytes) => {
            tracing::debug!(
                bytes,
                "malloc gives blocks past this size their own mapping"
            )
        }
        MmapThreshold::Operator => {
            tracing::debug!("malloc's mmap threshold is the one set in the environment")
        }
        MmapThreshold::Unsupported => {}
        MmapThreshold::Refused(bytes) => {
            tracing::warn!(bytes, "malloc refused this mmap threshold; its own is kept")
        }
    }
    outcome
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(bytes: usize) -> MmapThreshold {
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return MmapThreshold::Refused(bytes);
    };
    // SAFETY: mallopt changes a setting of the allocator and returns 0 for a value it refuses.
    // glibc's manual marks it MT-Unsafe (other threads read the setting without its lock): it
    // is called once, as the server starts, before the server has started any task of its own.
    #[allow(unsafe_code)]
    let done = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) };
    if done == 1 {
        MmapThreshold::Fixed(bytes)
    } else {
        MmapThreshold::Refused(bytes)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_bytes: usize) -> MmapThreshold {
    MmapThreshold::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_setting_through_glibcs_environment_is_kept() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(set_by_operator(env(&[(
            "MALLOC_MMAP_THRESHOLD_",
            "131072"
        )])));
        assert!(set_by_operator(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536"
        )])));
        assert!(!set_by_operator(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2"
        )])));
        assert!(!set_by_operator(env(&[])));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_a_threshold_and_a_value_past_its_parameter_is_refused() {
        assert_eq!(set(1 << 20), MmapThreshold::Fixed(1 << 20));
        // mallopt takes an int.
        assert_eq!(set(usize::MAX), MmapThreshold::Refused(usize::MAX));
    }
}
