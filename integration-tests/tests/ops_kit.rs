//! The operator's kit in `deploy/`, checked by Prometheus's own tool and by the binary: a real
//! broker's `/metrics` passes `promtool check metrics`; the alert rules pass `promtool check
//! rules` and their unit tests; every metric the rules and the dashboard name is on a real
//! broker's page; the sample configuration and environment files are accepted and show the
//! defaults the binary really has.
//!
//! promtool comes from `scripts/setup-interop.sh` (`.tools/bin/promtool`); without it these
//! tests fail, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration_tests::http::{free_addr, get, sample};
use integration_tests::{
    frames, free_endpoint, majordomo_bin, wait_for_service, Proc, RawPeer, PATIENCE,
};

/// The alert rules, their unit tests and the dashboard, from the repository's root.
const RULES: &str = "deploy/prometheus/majordomo-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/majordomo-rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/majordomo.json";
/// The sample configuration file and systemd environment file.
const SAMPLE_TOML: &str = "deploy/majordomo.toml";
const SAMPLE_ENV: &str = "deploy/majordomo.env";

/// The repository's root.
fn root() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

/// The text of `path`, relative to the repository's root.
fn read(path: &str) -> Result<String> {
    let path = root().join(path);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `.tools/bin/promtool`, which `scripts/setup-interop.sh` extracts from Debian's package.
fn promtool() -> Result<PathBuf> {
    let path = root().join(".tools/bin/promtool");
    ensure!(
        path.exists(),
        "{} is missing: run scripts/setup-interop.sh first (the README's test command does)",
        path.display()
    );
    Ok(path)
}

/// Runs promtool with `args` from the repository's root, `input` on its stdin.
fn run_promtool(args: &[&str], input: &str) -> Result<Output> {
    let mut child = Command::new(promtool()?)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    let mut stdin = child.stdin.take().context("promtool's stdin")?;
    // Written from a thread: promtool may answer before it has read everything.
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    Ok(output)
}

/// promtool's exit status and everything it printed, for failure messages.
fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A file under the system's temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("majordomo-ops-kit-{}-{tag}", std::process::id()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Scrapes until `done` holds for the page, or fails after [`PATIENCE`] with the last page; a
/// listener not yet up (its process still starting) is tried again until then.
async fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, page) = match get(addr, "/metrics").await {
            Ok(answer) => answer,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(error) => return Err(error.context(format!("{what}: {addr} never answered"))),
        };
        ensure!(status == 200, "/metrics answered {status}");
        if done(&page) {
            return Ok(page);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The processes behind [`busy_pages`], killed when dropped.
struct Brokers {
    _procs: Vec<Proc>,
    _rules: TempFile,
}

/// The `/metrics` pages of two brokers after they have seen something of everything the rules
/// and the dashboard watch: one served a worker, a `majordomo call`, a request nobody serves
/// (dropped as `no_worker`) and a malformed message; the other, one broker of a Binary Star
/// pair with access rules, reloaded them on SIGHUP. Then the pages of the worker that answered
/// the call and of a Titanic server on the first broker.
async fn busy_pages() -> Result<(Brokers, Vec<String>)> {
    let (ep, metrics) = (free_endpoint()?, free_addr()?);
    let mut broker = Proc::spawn(&[
        "broker",
        "--bind",
        &ep,
        "--metrics-listen",
        &metrics,
        "--request-expiry",
        "100ms",
    ])?;
    broker.wait_until_serving(&ep).await?;
    let worker_metrics = free_addr()?;
    let worker = Proc::spawn(&[
        "worker",
        "--connect",
        &ep,
        "--metrics-listen",
        &worker_metrics,
        "echo",
    ])?;
    wait_for_service(&ep, "echo").await?;
    let titanic_metrics = free_addr()?;
    let titanic = Proc::spawn(&[
        "titanic",
        "--connect",
        &ep,
        "--in-memory",
        "--metrics-listen",
        &titanic_metrics,
    ])?;
    let call = tokio::process::Command::new(majordomo_bin()?)
        .args(["call", "--connect", &ep, "echo", "hello"])
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(
        call.status.success() && call.stdout == b"hello\n",
        "majordomo call: {}: {}{}",
        call.status,
        String::from_utf8_lossy(&call.stdout),
        String::from_utf8_lossy(&call.stderr)
    );
    let mut peer = RawPeer::connect(&ep).await?;
    // A request for a service nobody serves, dropped after the 100 ms expiry, and a message
    // with an unknown protocol header.
    peer.send(frames(&[b"", b"MDPC01", b"nobody", b"x"]))
        .await?;
    peer.send(frames(&[b"", b"MDPX01", b"echo", b"x"])).await?;
    let busy = scrape_until(&metrics, "a reply, a drop and a protocol error", |page| {
        sample(page, "majordomo_replies_total") >= Some(1.0)
            && sample(
                page,
                "majordomo_dropped_requests_total{reason=\"no_worker\"}",
            ) == Some(1.0)
            && sample(
                page,
                "majordomo_protocol_errors_total{kind=\"unknown_header\"}",
            ) == Some(1.0)
            && page.contains("majordomo_request_duration_seconds_count{service=\"echo\"}")
    })
    .await?;
    let worked = scrape_until(&worker_metrics, "the worker's request counted", |page| {
        sample(
            page,
            "majordomo_worker_requests_total{service=\"echo\",outcome=\"ok\"}",
        ) == Some(1.0)
            && page.contains("majordomo_worker_request_duration_seconds_count{service=\"echo\"}")
    })
    .await?;
    let titanic_page = scrape_until(&titanic_metrics, "Titanic's stats", |page| {
        sample(page, "majordomo_titanic_stored") == Some(0.0)
            && page.contains("majordomo_titanic_latency_seconds{")
    })
    .await?;

    let rules = TempFile::new("access.toml", "")?;
    let (pair_ep, pair_metrics) = (free_endpoint()?, free_addr()?);
    let (state, peer_state) = (free_endpoint()?, free_endpoint()?);
    let pair = Proc::spawn(&[
        "broker",
        "--bind",
        &pair_ep,
        "--metrics-listen",
        &pair_metrics,
        "--bstar",
        "primary",
        "--bstar-bind",
        &state,
        "--bstar-peer",
        &peer_state,
        "--access-rules",
        rules.path(),
    ])?;
    // Its loop answering (/healthz 200) means its signal handlers are in place: they are
    // installed before the loop starts, and a SIGHUP before them would end the process. (The
    // empty access rules refuse every request, `mmi.service` included, so that cannot tell.)
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get(&pair_metrics, "/healthz")
        .await
        .map(|(status, _)| status)
        .ok()
        != Some(200)
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the Binary Star broker's /healthz never answered 200: {}",
            pair.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pair.signal("HUP")?;
    let reloaded = scrape_until(&pair_metrics, "the SIGHUP reload counted", |page| {
        sample(page, "majordomo_reloads_total{result=\"ok\"}") == Some(1.0)
            && page.contains("majordomo_bstar_state{")
    })
    .await?;
    Ok((
        Brokers {
            _procs: vec![broker, worker, titanic, pair],
            _rules: rules,
        },
        vec![busy, reloaded, worked, titanic_page],
    ))
}

/// The metric names on a page: families from `# TYPE` lines and the names of the samples
/// (`_bucket`, `_sum` and `_count` of a histogram among them).
fn names_on(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The metric names a file mentions: identifiers that begin with `majordomo_` or `process_` and
/// go on with lowercase letters, digits and underscores.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for prefix in ["majordomo_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_owned());
        }
    }
    names
}

/// (a) The page of a broker that has served traffic passes `promtool check metrics`: the text
/// format parses, and the lint (names, units, help, counter suffixes) has nothing to say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_passes_promtool_check_metrics() -> Result<()> {
    promtool()?;
    let (_brokers, pages) = busy_pages().await?;
    for page in pages {
        let output = run_promtool(&["check", "metrics"], &page)?;
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool check metrics: {}\n--- the page\n{page}",
            describe(&output)
        );
    }
    Ok(())
}

/// (b) The alert rules load, and their unit tests pass: each alert fires on the series of a
/// broker in trouble and stays quiet on a healthy one. Each rule has a severity, a summary and
/// a description, and each alert is shown firing in the unit tests.
#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let output = run_promtool(&["check", "rules", RULES], "")?;
    assert!(
        output.status.success(),
        "promtool check rules: {}",
        describe(&output)
    );
    let output = run_promtool(&["test", "rules", RULES_TEST], "")?;
    assert!(
        output.status.success(),
        "promtool test rules: {}",
        describe(&output)
    );

    // Each `- alert:` block, from its line to the next one.
    let rules = read(RULES)?;
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    ensure!(!blocks.is_empty(), "no alert in {RULES}");
    let tests = read(RULES_TEST)?;
    for block in blocks {
        let name = block.split_whitespace().next().unwrap_or_default();
        for key in ["severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        // A test case for it that expects it to fire: `alertname: NAME` with an `exp_labels`
        // before the next case.
        let fires = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {name}\n")) && case.contains("exp_labels")
        });
        assert!(fires, "{RULES_TEST} never shows {name} firing");
    }
    Ok(())
}

/// The PromQL of every panel's targets, the panels inside rows included, as written (with
/// Grafana's variables).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(panel: &serde_json::Value, out: &mut Vec<String>) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_owned());
            }
        }
        for inner in panel["panels"].as_array().into_iter().flatten() {
            walk(inner, out);
        }
    }
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        walk(panel, &mut out);
    }
    out
}

/// The dashboard is a Grafana dashboard with a Prometheus data source variable and an instance
/// variable, and every panel's query is valid PromQL (checked by promtool as recording rules).
#[test]
fn dashboard_has_its_variables_and_valid_queries() -> Result<()> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)?).context("the dashboard is JSON")?;
    let schema = dashboard["schemaVersion"]
        .as_u64()
        .context("schemaVersion")?;
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    let datasource = variable("datasource").context("a `datasource` variable")?;
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let instance = variable("instance").context("an `instance` variable")?;
    assert_eq!(instance["type"], "query");

    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{} queries", queries.len());
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {} does not use the datasource variable",
                panel["title"]
            );
        }
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, query) in queries.iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$service", ".*");
        ensure!(!query.contains('$'), "a variable left in {query}");
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&query)?
        ));
    }
    let file = TempFile::new("dashboard-rules.yml", &rules)?;
    let output = run_promtool(&["check", "rules", file.path()], "")?;
    assert!(
        output.status.success(),
        "the dashboard's queries as rules: {}\n{rules}",
        describe(&output)
    );
    Ok(())
}

/// (c) Every metric the rules, their tests and the dashboard name is on a real broker's page, so
/// that a renamed metric fails here rather than in a silent dashboard or an alert that never
/// fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_metrics_the_broker_exports() -> Result<()> {
    let (_brokers, pages) = busy_pages().await?;
    let exported: BTreeSet<String> = pages.iter().flat_map(|page| names_on(page)).collect();
    for file in [RULES, RULES_TEST, DASHBOARD] {
        let named = names_in(&read(file)?);
        assert!(named.len() >= 5, "{file} names {named:?}");
        let unknown: Vec<&String> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no broker exports: {unknown:?}\nexported: {exported:?}"
        );
    }
    Ok(())
}

/// `majordomo <server> [args] --print-config`, with no `MAJORDOMO_*` variable but `env`: the
/// `[server]` table it prints, as key and value text.
fn print_config(
    server: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Result<BTreeMap<String, String>> {
    let mut command = Command::new(majordomo_bin()?);
    command.arg(server);
    if server == "worker" {
        // What a worker serves is a subcommand; its options are the worker's.
        command.arg("echo");
    }
    command.args(args).arg("--print-config");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MAJORDOMO_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let output = command.output()?;
    ensure!(
        output.status.success(),
        "majordomo {server} {args:?} --print-config with {env:?}: {}",
        describe(&output)
    );
    let text = String::from_utf8(output.stdout)?;
    let tables = toml_lines(&text);
    Ok(tables
        .get(server)
        .map(|t| t.set.clone())
        .unwrap_or_default())
}

/// One table of a TOML file read line by line: `key = value` lines, and `# key = value` lines
/// (an option commented out).
#[derive(Default, Debug)]
struct Table {
    set: BTreeMap<String, String>,
    commented: BTreeMap<String, String>,
}

/// A `key = value` line whose key is spelt as a long option is (`max-wait`), as key and value.
fn option_line(line: &str) -> Option<(String, String)> {
    let (key, value) = line.split_once(" = ")?;
    let option = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    option.then(|| (key.to_owned(), value.trim().to_owned()))
}

/// The tables of a TOML file written one `key = value` per line, as `--print-config` and the
/// sample are; values are kept as written.
fn toml_lines(text: &str) -> BTreeMap<String, Table> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            tables.entry(current.clone()).or_default();
        } else if let Some(commented) = line.strip_prefix('#') {
            if let Some((key, value)) = option_line(commented.trim()) {
                tables
                    .entry(current.clone())
                    .or_default()
                    .commented
                    .insert(key, value);
            }
        } else if let Some((key, value)) = option_line(line) {
            tables
                .entry(current.clone())
                .or_default()
                .set
                .insert(key, value);
        }
    }
    tables
}

/// Every long option of `majordomo <server>` that a file may set, from its help.
fn options_of(server: &str) -> Result<BTreeSet<String>> {
    let output = Command::new(majordomo_bin()?)
        .args([server, "--help"])
        .output()?;
    ensure!(output.status.success(), "{}", describe(&output));
    let help = String::from_utf8(output.stdout)?;
    Ok(help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '<']).next())
        .filter(|name| !["config", "print-config", "help", "version"].contains(name))
        .map(str::to_owned)
        .collect())
}

/// (d) The sample configuration is accepted by each server whose table it has; its two set keys
/// take effect and everything else stays at the default; every broker option is in it; each
/// commented line shows the binary's real default; and with every commented line uncommented it
/// is still accepted (the examples for options without a default are valid values).
#[test]
fn sample_configuration_is_accepted_and_shows_the_defaults() -> Result<()> {
    let path = root().join(SAMPLE_TOML);
    let path = path.to_str().context("a UTF-8 path")?;
    let text = read(SAMPLE_TOML)?;
    let tables = toml_lines(&text);
    let names: Vec<&String> = tables.keys().collect();
    assert_eq!(
        names,
        ["broker", "ppqueue", "spqueue", "titanic", "worker"],
        "the sample's tables"
    );
    for (server, table) in &tables {
        let defaults = print_config(server, &[], &[])?;
        let configured = print_config(server, &["--config", path], &[])?;
        for (key, value) in &table.set {
            assert_eq!(configured.get(key), Some(value), "{server}.{key}");
        }
        for (key, value) in &configured {
            if !table.set.contains_key(key) {
                assert_eq!(defaults.get(key), Some(value), "{server}.{key}");
            }
        }
        for (key, value) in &table.commented {
            assert!(
                !table.set.contains_key(key),
                "{server}.{key} is both set and commented"
            );
            if let Some(default) = defaults.get(key) {
                assert_eq!(
                    value, default,
                    "the commented {server}.{key} is not the default"
                );
            }
        }
        let options = options_of(server)?;
        for key in table.set.keys().chain(table.commented.keys()) {
            assert!(options.contains(key), "{server}.{key} is not an option");
        }
        if server == "broker" {
            let missing: Vec<&String> = options
                .iter()
                .filter(|o| !table.set.contains_key(*o) && !table.commented.contains_key(*o))
                .collect();
            assert!(
                missing.is_empty(),
                "broker options not in the sample: {missing:?}"
            );
        }
    }

    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if option_line(rest).is_some() => format!("{rest}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let every = TempFile::new("every-option.toml", &uncommented)?;
    for server in tables.keys() {
        let printed = print_config(server, &["--config", every.path()], &[])?;
        for (key, value) in &tables[server].commented {
            assert_eq!(printed.get(key), Some(value), "uncommented {server}.{key}");
        }
    }
    Ok(())
}

/// (d) The sample environment file names only variables the broker reads (it refuses any other
/// `MAJORDOMO_*`), each with a value it takes: with every line uncommented and set, and
/// `MAJORDOMO_CONFIG` pointing at the sample configuration, `--print-config` succeeds and shows
/// each variable's value.
#[test]
fn sample_environment_file_is_accepted() -> Result<()> {
    let text = read(SAMPLE_ENV)?;
    let mut env = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let assignment = line.strip_prefix('#').unwrap_or(line);
        let Some((name, value)) = assignment.split_once('=') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        env.push((name.to_owned(), value.to_owned()));
    }
    let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
    assert!(names.contains(&"RUST_LOG"), "{names:?}");
    assert!(
        text.lines().any(|line| line.starts_with("RUST_LOG=")),
        "RUST_LOG is set, not commented"
    );
    let broker_vars = names
        .iter()
        .filter(|name| name.starts_with("MAJORDOMO_BROKER_"))
        .count();
    assert!(broker_vars >= 20, "{names:?}");

    let sample = root().join(SAMPLE_TOML);
    for (name, value) in &mut env {
        if name == "MAJORDOMO_CONFIG" {
            *value = sample.to_str().context("a UTF-8 path")?.to_owned();
        }
    }
    let printed = print_config("broker", &[], &env)?;
    for (name, value) in &env {
        let Some(option) = name.strip_prefix("MAJORDOMO_BROKER_") else {
            continue;
        };
        let key = option.to_lowercase().replace('_', "-");
        let shown = printed
            .get(&key)
            .with_context(|| format!("{name}: no {key} in {printed:?}"))?;
        // `["a", "b"]` and `"a"` as the variable spells them: `a,b` and `a`.
        let shown: String = shown
            .chars()
            .filter(|c| !matches!(c, '[' | ']' | '"' | ' '))
            .collect();
        assert_eq!(&shown, value, "{name}");
    }
    Ok(())
}
