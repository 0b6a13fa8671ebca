//! `majordomo keygen`: a CURVE key pair as czmq certificate files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use majordomo_broker::CurveKeyPair;

/// Options of `keygen`.
#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Writes NAME (the public key, to hand out) and NAME_secret (both keys, mode 0600), as
    /// czmq's zcert_save does.
    name: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// Generates a pair from the operating system's random source, writes both files and prints the
/// public key.
pub(crate) fn run(args: KeygenArgs) -> Result<()> {
    let mut secret = args.name.as_os_str().to_owned();
    secret.push("_secret");
    for path in [&args.name, &PathBuf::from(secret)] {
        if path.exists() && !args.force {
            bail!("{} exists; give --force to replace it", path.display());
        }
    }
    let pair = CurveKeyPair::generate();
    let secret = pair.save(&args.name)?;
    println!("{}", pair.public());
    eprintln!(
        "wrote {} (public) and {} (secret)",
        args.name.display(),
        secret.display()
    );
    Ok(())
}
