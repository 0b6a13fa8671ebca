//! One module per subcommand, each with its options and its `run`.

pub(crate) mod broker;
pub(crate) mod call;
pub(crate) mod demo;
pub(crate) mod docs;
pub(crate) mod flserver;
pub(crate) mod keygen;
pub(crate) mod queue;
pub(crate) mod status;
pub(crate) mod titanic;
pub(crate) mod top;
pub(crate) mod worker;

use anyhow::{Context, Result};

/// A byte size as a count this machine can hold.
pub(crate) fn byte_count(size: bytesize::ByteSize) -> Result<usize> {
    usize::try_from(size.as_u64()).context("byte size too large for this machine")
}
