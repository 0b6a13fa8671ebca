//! `majordomo completions` and `majordomo man`: generated from the command's own definition, so
//! they never drift from it.

use anyhow::Result;
use clap::Args;

use crate::config;

/// Options of `completions`.
#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the completion script for the shell asked for.
pub(crate) fn completions(args: CompletionsArgs) -> Result<()> {
    clap_complete::generate(
        args.shell,
        &mut config::command(),
        "majordomo",
        &mut std::io::stdout(),
    );
    Ok(())
}

/// Prints the manual page (roff).
pub(crate) fn man() -> Result<()> {
    Ok(clap_mangen::Man::new(config::command()).render(&mut std::io::stdout())?)
}
