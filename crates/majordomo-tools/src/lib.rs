//! The tooling of the `majordomo` command, apart from the product: the benchmark
//! (`majordomo bench`, [`bench`](mod@bench)) and the soak run (`majordomo soak`, [`soak`]), the servers the
//! benchmark measures the transport with (the `majordomo-bench-fixture` binary,
//! [`bench::fixture`]), and what they and the end-to-end tests share: child processes started,
//! signalled, measured and killed ([`child`]), free loopback endpoints ([`endpoint`]), and the
//! binaries they start ([`bins`]).
//!
//! Layout:
//! - [`bench`](mod@bench): the runs, the load generator, the report, and the fixtures.
//! - [`soak`]: broker and worker processes under random kills for a while.
//! - [`echo`]: the echo service of `majordomo worker echo`, which the benchmark also runs in
//!   process.

#![warn(missing_docs)]

pub mod bench;
pub mod bins;
pub mod child;
pub mod echo;
pub mod endpoint;
pub mod soak;
