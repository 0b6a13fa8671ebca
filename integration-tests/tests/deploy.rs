//! The deployment files in `deploy/`: the systemd unit and the container image's Dockerfile.
//! (The Prometheus rules, the dashboard and the sample configuration: `ops_kit.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use integration_tests::majordomo_bin;

/// The unit's file name, which `systemd-analyze verify` also takes as the unit's name.
const UNIT: &str = "majordomo-broker.service";

/// Where the unit runs the binary from.
const INSTALLED_BIN: &str = "/usr/local/bin/majordomo";

/// A unit file section and every key the unit may set in it.
type Section = (&'static str, &'static [&'static str]);

/// The sections of the unit and the keys it uses: anything else, such as a misspelt key that
/// systemd would only warn about and ignore, fails the test.
const UNIT_KEYS: &[Section] = &[
    ("Unit", &["Description", "After"]),
    (
        "Service",
        &[
            "Type",
            "ExecStart",
            "Environment",
            "EnvironmentFile",
            "Restart",
            "RestartSec",
            "KillSignal",
            "TimeoutStopSec",
            "LimitNOFILE",
            "DynamicUser",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "NoNewPrivileges",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "RestrictAddressFamilies",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "LockPersonality",
            "MemoryDenyWriteExecute",
            "SystemCallArchitectures",
            "SystemCallFilter",
            "CapabilityBoundingSet",
            "AmbientCapabilities",
            "UMask",
        ],
    ),
    ("Install", &["WantedBy"]),
];

/// The instructions a Dockerfile may contain.
const DOCKERFILE_INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The path and text of `name` in `deploy/` at the repository's root.
fn deploy_file(name: &str) -> Result<(PathBuf, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path, text))
}

/// One `key=value` line of a unit file and the section it is in.
#[derive(Debug)]
struct Setting {
    section: &'static str,
    key: String,
    value: String,
}

/// Parses a unit file as systemd reads it: `[Section]` headers, `key=value` settings, blank lines
/// and whole-line `#` or `;` comments. Fails on any other line, on a setting before the first
/// section, on a continued line (the unit uses none), and on a section or key not in
/// [`UNIT_KEYS`].
fn parse_unit(text: &str) -> Result<Vec<Setting>> {
    let mut section: Option<&'static Section> = None;
    let mut settings = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        ensure!(
            !line.ends_with('\\'),
            "line {number}: a continued line, which this parser does not join: {raw:?}"
        );
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .strip_suffix(']')
                .with_context(|| format!("line {number}: unterminated section header {raw:?}"))?;
            section = Some(
                UNIT_KEYS
                    .iter()
                    .find(|known| known.0 == name)
                    .with_context(|| format!("line {number}: unknown section [{name}]"))?,
            );
            continue;
        }
        let Some(&(section_name, keys)) = section else {
            bail!("line {number}: {raw:?} is outside any section");
        };
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("line {number}: neither a section nor key=value: {raw:?}"))?;
        let key = key.trim();
        ensure!(
            keys.contains(&key),
            "line {number}: unknown key {key:?} in [{section_name}]"
        );
        settings.push(Setting {
            section: section_name,
            key: key.to_owned(),
            value: value.trim().to_owned(),
        });
    }
    Ok(settings)
}

/// Every value `key` has in `section`, in order: a key may be set more than once.
fn values<'a>(settings: &'a [Setting], section: &str, key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|setting| setting.section == section && setting.key == key)
        .map(|setting| setting.value.as_str())
        .collect()
}

/// The value of `key` in `section`, which must be set exactly once.
fn value<'a>(settings: &'a [Setting], section: &str, key: &str) -> Result<&'a str> {
    let found = values(settings, section, key);
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!("[{section}] does not set {key}="),
        many => bail!("[{section}] sets {key}= {} times: {many:?}", many.len()),
    }
}

/// Whether `systemd-analyze` can be started; failing to spawn it means it is not installed.
fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The unit's text with its `ExecStart=` running `bin` instead of the installed binary.
fn unit_running(text: &str, bin: &Path) -> Result<String> {
    let bin = bin.display().to_string();
    let bin = if bin.contains(char::is_whitespace) {
        format!("\"{bin}\"")
    } else {
        bin
    };
    let prefix = format!("ExecStart={INSTALLED_BIN} ");
    let mut replaced = 0;
    let mut out = String::new();
    for line in text.lines() {
        match line.strip_prefix(&prefix) {
            Some(args) => {
                replaced += 1;
                out.push_str(&format!("ExecStart={bin} {args}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    ensure!(
        replaced == 1,
        "expected one {prefix:?} line, found {replaced}"
    );
    Ok(out)
}

/// The unit parses with only known sections and keys, sets the hardening it documents, and
/// passes `systemd-analyze verify` where that is installed.
#[test]
fn systemd_unit_is_valid_and_hardened() -> Result<()> {
    let (path, text) = deploy_file(UNIT)?;
    let unit = parse_unit(&text).with_context(|| format!("parsing {}", path.display()))?;

    let exec = value(&unit, "Service", "ExecStart")?;
    assert!(
        exec.starts_with(&format!("{INSTALLED_BIN} broker")),
        "ExecStart={exec}"
    );
    assert!(exec.contains("--bind tcp://"), "ExecStart={exec}");

    for (key, expected) in [
        // Readiness from the broker itself, once its endpoints are bound (NOTIFY_SOCKET).
        ("Type", "notify"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(value(&unit, "Service", key)?, expected, "{key}=");
    }

    // TCP for the peers, and Unix sockets for the guard's private socket to zmq.rs.
    let families = value(&unit, "Service", "RestrictAddressFamilies")?;
    assert!(!families.starts_with('~'), "an allow list: {families}");
    let families: Vec<&str> = families.split_whitespace().collect();
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.contains(&family), "{family} in {families:?}");
    }

    let filters = values(&unit, "Service", "SystemCallFilter");
    assert!(filters.contains(&"@system-service"), "{filters:?}");
    assert!(
        filters
            .iter()
            .any(|filter| filter.starts_with('~') && filter.contains("@privileged")),
        "{filters:?}"
    );

    // Three descriptors per guarded connection, at the guard's default of 4,096 connections.
    let nofile: u64 = value(&unit, "Service", "LimitNOFILE")?
        .parse()
        .context("LimitNOFILE= is a number")?;
    assert!(nofile >= 3 * 4096, "LimitNOFILE={nofile}");

    // Longer than the broker's default drain (5 s), so it exits on its own before SIGKILL.
    let stop: u64 = value(&unit, "Service", "TimeoutStopSec")?
        .trim_end_matches('s')
        .parse()
        .context("TimeoutStopSec= is a number of seconds")?;
    assert!(stop > 5, "TimeoutStopSec={stop}");

    assert!(
        values(&unit, "Service", "Environment")
            .iter()
            .any(|env| env.starts_with("RUST_LOG=")),
        "Environment=RUST_LOG"
    );
    // deploy/majordomo.env, optional ('-'): the unit starts without it.
    assert_eq!(
        value(&unit, "Service", "EnvironmentFile")?,
        "-/etc/majordomo/majordomo.env"
    );
    assert_eq!(value(&unit, "Install", "WantedBy")?, "multi-user.target");

    // systemd-analyze may not be installed (a container, another OS): then the checks above are
    // the whole test. Where it is, it checks the unit as systemd would load it, with ExecStart
    // pointing at the binary built for the tests, as verify requires an existing executable.
    if !have_systemd_analyze() {
        eprintln!("systemd-analyze is not installed: verify skipped");
        return Ok(());
    }
    let dir = integration_tests::scratch_dir("deploy-unit")?;
    let copy = dir.path().join(UNIT);
    std::fs::write(&copy, unit_running(&text, &majordomo_bin()?)?)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify {}: {}\n{stderr}",
        copy.display(),
        out.status
    );
    // verify only warns about unknown keys and settings it ignores; none may concern the unit.
    let warnings: Vec<&str> = stderr.lines().filter(|line| line.contains(UNIT)).collect();
    assert!(warnings.is_empty(), "{stderr}");
    Ok(())
}

/// One Dockerfile instruction: its name in capitals and its arguments.
#[derive(Debug)]
struct Instruction {
    name: String,
    args: String,
}

/// Splits a Dockerfile into instructions: skips blank lines and `#` comment lines (parser
/// directives included, and inside a continued instruction as Docker does), joins a line ending
/// in `\` with the next, and fails on an instruction Docker does not have.
fn parse_dockerfile(text: &str) -> Result<Vec<Instruction>> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let (name, args) = pending
            .split_once(char::is_whitespace)
            .with_context(|| format!("an instruction without arguments: {pending:?}"))?;
        let name = name.to_ascii_uppercase();
        ensure!(
            DOCKERFILE_INSTRUCTIONS.contains(&name.as_str()),
            "unknown instruction {name}"
        );
        instructions.push(Instruction {
            name,
            args: args.trim().to_owned(),
        });
        pending.clear();
    }
    ensure!(
        pending.is_empty(),
        "the last instruction ends in a continuation: {pending:?}"
    );
    Ok(instructions)
}

/// The flags (`--from=...`) and the paths of a `COPY` instruction's arguments.
fn copy_args(args: &str) -> (Vec<&str>, Vec<&str>) {
    args.split_whitespace()
        .partition(|word| word.starts_with("--"))
}

/// The last instruction called `name` in `stage`: the one that takes effect.
fn last<'a>(stage: &'a [Instruction], name: &str) -> Result<&'a str> {
    stage
        .iter()
        .rev()
        .find(|instruction| instruction.name == name)
        .map(|instruction| instruction.args.as_str())
        .with_context(|| format!("the final stage has no {name}"))
}

/// The image's final stage is `FROM scratch` with the static binary, a `/tmp` for the guard, a
/// non-root user, the binary as entry point and SIGTERM as stop signal.
#[test]
fn dockerfile_final_stage_is_from_scratch() -> Result<()> {
    let (path, text) = deploy_file("Dockerfile")?;
    let instructions =
        parse_dockerfile(&text).with_context(|| format!("parsing {}", path.display()))?;

    let from = instructions
        .iter()
        .rposition(|instruction| instruction.name == "FROM")
        .context("no FROM")?;
    assert_eq!(
        instructions[from].args.split_whitespace().next(),
        Some("scratch"),
        "the last FROM: {}",
        instructions[from].args
    );
    let stage = &instructions[from + 1..];

    let copies: Vec<(Vec<&str>, Vec<&str>)> = stage
        .iter()
        .filter(|instruction| instruction.name == "COPY")
        .map(|instruction| copy_args(&instruction.args))
        .collect();
    assert!(
        copies.iter().any(|(flags, paths)| {
            paths.len() >= 2
                && paths.last() == Some(&"/majordomo")
                && !flags.iter().any(|flag| flag.starts_with("--from"))
        }),
        "no COPY of the binary from the build context to /majordomo: {copies:?}"
    );
    // scratch has no /tmp: it comes from an earlier stage, copied as / or /tmp.
    assert!(
        copies.iter().any(|(flags, paths)| {
            flags.iter().any(|flag| flag.starts_with("--from="))
                && matches!(paths.last(), Some(&("/" | "/tmp" | "/tmp/")))
        }),
        "no COPY --from=... of a /tmp: {copies:?}"
    );

    let entrypoint: Vec<String> =
        serde_json::from_str(last(stage, "ENTRYPOINT")?).context("ENTRYPOINT in exec form")?;
    assert_eq!(entrypoint, ["/majordomo"]);
    let cmd: Vec<String> = serde_json::from_str(last(stage, "CMD")?).context("CMD in exec form")?;
    assert_eq!(cmd.first().map(String::as_str), Some("broker"), "{cmd:?}");

    let user = last(stage, "USER")?;
    let (name, group) = user.split_once(':').unwrap_or((user, ""));
    assert!(!matches!(name, "" | "0" | "root"), "USER {user}");
    assert!(!matches!(group, "0" | "root"), "USER {user}");

    assert_eq!(last(stage, "STOPSIGNAL")?, "SIGTERM");
    // The health check: `status --probe` against the broker's own port, in exec form.
    let health = last(stage, "HEALTHCHECK")?;
    let probe = health
        .split_once("CMD")
        .map(|(_, c)| c.trim())
        .context("HEALTHCHECK CMD")?;
    let probe: Vec<String> = serde_json::from_str(probe).context("HEALTHCHECK CMD in exec form")?;
    assert_eq!(probe[..3], ["/majordomo", "status", "--probe"], "{probe:?}");
    assert!(
        probe.iter().any(|a| a == "tcp://127.0.0.1:5555"),
        "{probe:?}"
    );
    assert!(
        stage.iter().any(|instruction| instruction.name == "EXPOSE"
            && instruction
                .args
                .split_whitespace()
                .any(|port| port == "5555")),
        "EXPOSE 5555"
    );
    Ok(())
}

/// The unit's `Type=notify` holds: started with `NOTIFY_SOCKET`, as systemd starts it, the
/// broker sends `READY=1` once it serves (a request answered straight after it proves it), then
/// `STOPPING=1` on SIGTERM, and exits 0 after its drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_tells_systemd_when_it_is_ready_and_when_it_stops() -> Result<()> {
    use integration_tests::{free_endpoint, PATIENCE};
    let scratch = integration_tests::scratch_dir("notify")?;
    let path = scratch.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&path)?;
    let endpoint = free_endpoint()?;
    let mut broker = tokio::process::Command::new(majordomo_bin()?)
        .args(["broker", "--bind", &endpoint, "--drain-timeout", "1s"])
        .env("NOTIFY_SOCKET", &path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut datagram = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, socket.recv(&mut datagram))
        .await
        .context("no notification from the broker")??;
    assert_eq!(&datagram[..n], b"READY=1\n");

    // Ready means serving: one attempt, answered.
    let client = majordomo_client::Client::new(
        endpoint.as_str(),
        majordomo_client::ClientConfig::default()
            .timeout(PATIENCE)
            .attempts(1),
    );
    let answer = client
        .request("mmi.service", vec![bytes::Bytes::from_static(b"echo")])
        .await?;
    assert_eq!(answer, [bytes::Bytes::from_static(b"404")]);

    let pid = broker.id().context("the broker's pid")?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -TERM {pid}");
    let n = tokio::time::timeout(PATIENCE, socket.recv(&mut datagram))
        .await
        .context("no STOPPING=1 after SIGTERM")??;
    assert_eq!(&datagram[..n], b"STOPPING=1\n");
    let status = tokio::time::timeout(PATIENCE, broker.wait())
        .await
        .context("the broker did not exit")??;
    assert!(status.success(), "{status}");
    Ok(())
}
