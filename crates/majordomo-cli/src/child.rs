//! Child processes of this binary for `bench` and `soak`: started with a subcommand, signalled,
//! measured from /proc, and killed when dropped.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};

/// This binary running a subcommand as a child process; killed (and reaped) on drop.
pub(crate) struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    /// Starts this binary with `args`, logging at `log_level` to this process's stderr.
    pub(crate) fn spawn(args: &[&str], log_level: &str) -> Result<Self> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(args)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting child process")?;
        Ok(Self(child))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, `TERM`).
    pub(crate) fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Whether the process has exited.
    pub(crate) fn has_exited(&mut self) -> Result<bool> {
        Ok(self.0.try_wait()?.is_some())
    }

    /// Asks the process to stop with SIGTERM (a worker then sends DISCONNECT, so a broker that
    /// outlives it does not keep routing to it) and waits a bounded time; dropping it then kills
    /// it if it is still running.
    pub(crate) async fn terminate(mut self) {
        self.signal("TERM");
        for _ in 0..100 {
            if let Ok(true) = self.has_exited() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// (current, peak) resident memory of a process in KiB, from /proc.
pub(crate) fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) of a process, from /proc (clock ticks are 1/100 s on Linux).
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / 100.0)
}
