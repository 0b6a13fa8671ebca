//! The binaries the benchmark and the soak run start as child processes: `majordomo` itself,
//! and the fixtures' binary built beside it.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};

use crate::child::{Child, Stderr};

/// The file name of the fixtures' binary (see [`crate::bench::fixture`]).
pub const FIXTURE: &str = "majordomo-bench-fixture";

/// The `majordomo` binary: this process's own executable, since `majordomo bench` and
/// `majordomo soak` run inside it.
pub fn majordomo() -> Result<PathBuf> {
    std::env::current_exe().context("locating this process's executable")
}

/// The fixtures' binary, in the directory of this process's executable (`cargo build
/// --workspace --bins` builds it beside `majordomo`); an error naming the path when it is not
/// there.
pub fn fixture() -> Result<PathBuf> {
    let path = majordomo()?.with_file_name(FIXTURE);
    ensure!(
        path.exists(),
        "{} is missing: build it beside majordomo (`cargo build --workspace --bins`, or \
         `cargo build -p majordomo-tools`)",
        path.display()
    );
    Ok(path)
}

/// `majordomo` running `args` as a child process that logs at `log_level` to this process's
/// stderr; killed (and reaped) when dropped.
pub(crate) fn spawn_majordomo(args: &[&str], log_level: &str) -> Result<Child> {
    Child::spawn(majordomo()?, args, log_level, Stderr::Inherit)
}

/// The fixtures' binary running `args`, as [`spawn_majordomo`] runs `majordomo`.
pub(crate) fn spawn_fixture(args: &[&str], log_level: &str) -> Result<Child> {
    Child::spawn(fixture()?, args, log_level, Stderr::Inherit)
}
