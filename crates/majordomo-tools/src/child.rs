//! Child processes: started with their stderr captured (or passed through), signalled by name,
//! watched until they exit, measured from /proc, and killed when dropped.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::time::Instant;

/// How often [`Child::wait_exit`] looks whether the process has exited.
const POLL: Duration = Duration::from_millis(10);

/// Where a child's standard error goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stderr {
    /// To a temporary file, read back with [`Child::stderr_text`] and removed on drop.
    Capture,
    /// To this process's standard error.
    Inherit,
}

/// A child process with null stdin and stdout; killed (and reaped) when dropped.
pub struct Child {
    process: std::process::Child,
    /// The file holding its standard error, when captured.
    stderr_path: Option<PathBuf>,
}

impl Child {
    /// Starts `program` with `args` and `RUST_LOG` set to `log_level`, its standard error sent
    /// where `stderr` says.
    pub fn spawn(
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
        log_level: &str,
        stderr: Stderr,
    ) -> Result<Self> {
        Self::spawn_env(program, args, &[], log_level, stderr)
    }

    /// As [`Child::spawn`], with the variables `env` added to its environment.
    pub fn spawn_env(
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
        env: &[(&str, &str)],
        log_level: &str,
        stderr: Stderr,
    ) -> Result<Self> {
        let program = program.as_ref();
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let stderr_path = match stderr {
            Stderr::Inherit => None,
            Stderr::Capture => {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "majordomo-child-{}-{}.log",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                command.stderr(file);
                Some(path)
            }
        };
        let process = match command.spawn() {
            Ok(process) => process,
            Err(error) => {
                if let Some(path) = &stderr_path {
                    let _ = std::fs::remove_file(path);
                }
                return Err(error).with_context(|| format!("starting {}", program.display()));
            }
        };
        Ok(Self {
            process,
            stderr_path,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, `TERM`...), as `kill -NAME` does.
    pub fn signal(&self, name: &str) -> Result<()> {
        let output = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .output()
            .context("running kill")?;
        ensure!(
            output.status.success(),
            "kill -{name} {} failed: {}",
            self.pid(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    /// Whether the process has exited, without waiting.
    pub fn has_exited(&mut self) -> Result<bool> {
        Ok(self.process.try_wait()?.is_some())
    }

    /// Waits up to `within` for the process to exit and returns how it ended; an error if it is
    /// still running then.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("process {} did not exit within {within:?}", self.pid());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the process to stop with SIGTERM (a worker then sends DISCONNECT, so a broker that
    /// outlives it does not keep routing to it) and waits up to `within` for it to exit; if it is
    /// still running then, it is killed. Returns how it ended when it stopped by itself.
    pub async fn terminate(mut self, within: Duration) -> Option<ExitStatus> {
        // A process that is gone already cannot be signalled; waiting tells how it ended.
        let _ = self.signal("TERM");
        self.wait_exit(within).await.ok()
    }

    /// What the process has written to its standard error so far, when it is captured (empty
    /// when it is inherited).
    pub fn stderr_text(&self) -> String {
        self.stderr_path
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The process's resident memory, from /proc.
    pub fn memory(&self) -> Result<Memory> {
        memory(self.pid())
    }

    /// CPU seconds (user and system) the process has used, from /proc.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if let Some(path) = &self.stderr_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Resident memory of a process in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// The most it has been resident (`VmHWM`).
    pub peak_kib: u64,
}

/// Resident memory of any process, from `/proc/PID/status`.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the status of process {pid}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing for process {pid}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("{name} has no value"))?
            .parse()?)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// CPU seconds (user and system) of any process, from `/proc/PID/stat` (clock ticks are 1/100 s
/// on Linux).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading the stat of process {pid}"))?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = stat
        .rfind(')')
        .and_then(|end| stat.get(end + 2..))
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    ensure!(fields.len() > 12, "stat of process {pid} is too short");
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn captures_stderr_and_reports_the_exit() -> Result<()> {
        let mut child = Child::spawn(
            "sh",
            &["-c", "echo \"level $RUST_LOG\" >&2; exit 3"],
            "debug",
            Stderr::Capture,
        )?;
        let status = child.wait_exit(PATIENCE).await?;
        assert_eq!(status.code(), Some(3));
        assert!(child.has_exited()?);
        assert_eq!(child.stderr_text(), "level debug\n");
        Ok(())
    }

    #[tokio::test]
    async fn measures_a_running_process_and_signals_it() -> Result<()> {
        let mut child = Child::spawn("sleep", &["30"], "info", Stderr::Capture)?;
        assert!(!child.has_exited()?);
        let memory = child.memory()?;
        assert!(
            memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib,
            "{memory:?}"
        );
        assert!(child.wait_exit(Duration::from_millis(50)).await.is_err());
        child.signal("KILL")?;
        let status = child.wait_exit(PATIENCE).await?;
        assert!(!status.success());
        assert!(child.signal("NOSUCHSIGNAL").is_err());
        Ok(())
    }

    #[tokio::test]
    async fn cpu_seconds_counts_what_a_process_spent() -> Result<()> {
        let sleeping = Child::spawn("sleep", &["30"], "info", Stderr::Capture)?;
        let busy = Child::spawn(
            "sh",
            &["-c", "while :; do :; done"],
            "info",
            Stderr::Capture,
        )?;
        // The spinning shell's time grows until it passes a tenth of a second.
        let deadline = Instant::now() + PATIENCE;
        let spent = loop {
            let spent = busy.cpu_seconds()?;
            if spent >= 0.1 {
                break spent;
            }
            assert!(
                Instant::now() < deadline,
                "the busy process shows {spent} CPU seconds"
            );
            tokio::time::sleep(POLL).await;
        };
        let slept = sleeping.cpu_seconds()?;
        assert!(
            slept < spent,
            "the sleeping process shows {slept} CPU seconds, the busy one {spent}"
        );
        assert!(cpu_seconds(u32::MAX).is_err(), "no such process");
        Ok(())
    }

    #[tokio::test]
    async fn terminate_asks_with_sigterm() -> Result<()> {
        let child = Child::spawn(
            "sh",
            &[
                "-c",
                "trap 'exit 7' TERM; echo ready >&2; while :; do sleep 0.01; done",
            ],
            "info",
            Stderr::Capture,
        )?;
        let deadline = Instant::now() + PATIENCE;
        while !child.stderr_text().contains("ready") {
            assert!(Instant::now() < deadline, "the shell never set its trap");
            tokio::time::sleep(POLL).await;
        }
        let status = child.terminate(PATIENCE).await.context("no exit")?;
        assert_eq!(status.code(), Some(7));
        Ok(())
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let error = Child::spawn("/nonexistent/program", &["x"], "info", Stderr::Capture)
            .err()
            .expect("cannot start");
        assert!(
            format!("{error:#}").contains("/nonexistent/program"),
            "{error:#}"
        );
    }
}
