//! Helpers of the `majordomo` command that its tests share: child processes started, signalled,
//! measured and killed ([`child`]), and free loopback endpoints ([`endpoint`]).
//!
//! The command itself is the `majordomo` binary of this package; this library holds only what
//! it and the end-to-end tests that run it have in common.

#![warn(missing_docs)]

pub mod child;
pub mod endpoint;
