//! `majordomo completions` and `majordomo man`: generated from the command's own definition, so
//! they never drift from it. A manual page per command adds what the options cannot say: the
//! environment, the files, the signals and the exit status.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Command};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

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

/// Options of `man`.
#[derive(Args)]
pub(crate) struct ManArgs {
    /// The command whose page to print, e.g. `broker` (majordomo-broker(1)); default: the
    /// overview, majordomo(1).
    command: Option<String>,
    /// Write every page into this directory instead (majordomo.1, majordomo-broker.1, ...), e.g.
    /// /usr/local/share/man/man1.
    #[arg(long, conflicts_with = "command")]
    dir: Option<PathBuf>,
}

/// Prints one manual page (roff), or writes them all with `--dir`.
pub(crate) fn man(args: ManArgs) -> Result<()> {
    let pages = pages();
    if let Some(dir) = args.dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        for (name, page) in &pages {
            let path = dir.join(format!("{name}.1"));
            std::fs::write(&path, page).with_context(|| format!("{}", path.display()))?;
        }
        println!("{} pages written to {}", pages.len(), dir.display());
        return Ok(());
    }
    let wanted = match &args.command {
        Some(command) => format!("majordomo-{command}"),
        None => "majordomo".to_owned(),
    };
    let Some((_, page)) = pages.iter().find(|(name, _)| *name == wanted) else {
        let known: Vec<&str> = pages
            .iter()
            .filter_map(|(name, _)| name.strip_prefix("majordomo-"))
            .collect();
        bail!(
            "no page for {wanted}: the commands are {}",
            known.join(", ")
        );
    };
    std::io::stdout().write_all(page)?;
    Ok(())
}

/// Every page, by name: majordomo, then majordomo-COMMAND for each visible command.
fn pages() -> Vec<(String, Vec<u8>)> {
    let mut cli = config::command().disable_help_subcommand(true);
    cli.build();
    let mut pages = vec![("majordomo".to_owned(), overview(&cli))];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("majordomo-{}", sub.get_name());
        pages.push((name.clone(), command_page(sub, &name)));
    }
    pages
}

/// majordomo(1): the commands, and what all of them share.
fn overview(cli: &Command) -> Vec<u8> {
    let mut page = render(Man::new(cli.clone()), |roff| {
        section(roff, "ENVIRONMENT");
        for (name, what) in COMMON_ENVIRONMENT {
            item(roff, bold(*name), what);
        }
        section(roff, "EXIT STATUS");
        paragraph(
            roff,
            "0 on success, 1 on an error (printed on stderr), 2 on a usage error; see each \
             command's page for the others.",
        );
        see_also(roff, cli.get_subcommands().map(|s| s.get_name()));
    });
    page.shrink_to_fit();
    page
}

/// majordomo-COMMAND(1).
fn command_page(sub: &Command, name: &str) -> Vec<u8> {
    let command = sub.get_name();
    let man = Man::new(sub.clone().bin_name(format!("majordomo {command}")))
        .title(name.to_uppercase())
        .source(format!("majordomo {}", env!("CARGO_PKG_VERSION")));
    render(man, |roff| {
        section(roff, "ENVIRONMENT");
        if config::SERVERS.contains(&command) {
            let prefix = format!("MAJORDOMO_{}_", command.to_uppercase());
            item(
                roff,
                bold(format!("{prefix}<OPTION>")),
                "Each option, named as its long form in capitals with - as _ (listed with the \
                 option above). A repeatable option takes a comma-separated list. A flag beats \
                 its variable, which beats the --config file, which beats the default. A \
                 MAJORDOMO_* variable that no option reads is an error naming the closest one.",
            );
            item(
                roff,
                bold("MAJORDOMO_CONFIG"),
                "The --config file, when the flag is not given.",
            );
        }
        for (variable, what) in COMMON_ENVIRONMENT {
            item(roff, bold(*variable), what);
        }
        if GUARDED.contains(&command) {
            item(
                roff,
                bold("TMPDIR"),
                "Where the ZMTP guard makes its private directory (mode 0700) for the Unix \
                 socket between it and the server; /tmp when unset.",
            );
        }
        if SERVED.contains(&command) {
            item(
                roff,
                bold("NOTIFY_SOCKET"),
                "Set by systemd for a unit of Type=notify: READY=1 is sent there once every \
                 endpoint is bound, STOPPING=1 when a stop signal arrives.",
            );
        }
        let files = files(command);
        if !files.is_empty() {
            section(roff, "FILES");
            for (file, what) in files {
                item(roff, italic(file), what);
            }
        }
        section(roff, "SIGNALS");
        for (signal, what) in signals(command) {
            item(roff, bold(signal), what);
        }
        section(roff, "EXIT STATUS");
        for (status, what) in exit_status(command) {
            item(roff, bold(status), what);
        }
        see_also(roff, ["majordomo"].into_iter());
    })
}

/// The page `man` makes, then the sections `extra` adds, as roff.
fn render(man: Man, extra: impl FnOnce(&mut Roff)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut roff = Roff::new();
    extra(&mut roff);
    // Writing to memory cannot fail.
    let _ = man.render(&mut out);
    let _ = roff.to_writer(&mut out);
    out
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", []).text([roman(text)]);
}

/// A tagged paragraph: `tag` in the margin, `text` beside it.
fn item(roff: &mut Roff, tag: Inline, text: &str) {
    roff.control("TP", []).text([tag]).text([roman(text)]);
}

fn see_also<'a>(roff: &mut Roff, pages: impl Iterator<Item = &'a str>) {
    section(roff, "SEE ALSO");
    let names: Vec<String> = pages
        .map(|page| match page {
            "majordomo" => "majordomo(1)".to_owned(),
            command => format!("majordomo-{command}(1)"),
        })
        .collect();
    roff.text([roman(format!(
        "{}; docs/OPERATIONS.md and docs/SECURITY.md in the source.",
        names.join(", ")
    ))]);
}

/// What every command reads from its environment.
const COMMON_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "RUST_LOG",
        "Which logs to write on stderr, e.g. info or majordomo_broker=debug (default: info, or \
         warn for demo and bench).",
    ),
    (
        "MAJORDOMO_LOG_FORMAT",
        "text or json, when --log-format is not given.",
    ),
];

/// The commands whose tcp:// endpoints the ZMTP guard serves.
const GUARDED: &[&str] = &["broker", "ppqueue", "spqueue", "flserver"];

/// The commands that tell systemd when they are ready.
const SERVED: &[&str] = &[
    "broker", "ppqueue", "spqueue", "flserver", "worker", "titanic",
];

fn files(command: &str) -> Vec<(&'static str, &'static str)> {
    let mut files = Vec::new();
    if config::SERVERS.contains(&command) {
        files.push((
            "/etc/majordomo/majordomo.toml",
            "A --config file: a [broker], [ppqueue], [spqueue], [worker] or [titanic] table of \
             long option names (deploy/majordomo.toml in the source is a sample).",
        ));
    }
    if GUARDED.contains(&command) {
        files.push((
            "NAME_secret",
            "--curve-secret-key-file: the server's CURVE key pair, a czmq certificate (majordomo \
             keygen writes one; keep it mode 0600).",
        ));
        files.push((
            "CLIENTS",
            "--curve-clients: a directory of czmq certificates or a file of Z85 public keys, \
             one per line; reread on SIGHUP.",
        ));
    }
    match command {
        "broker" => files.push((
            "RULES.toml",
            "--access-rules: [[rule]] tables of keys, call and serve patterns; reread on SIGHUP.",
        )),
        "titanic" => files.push((
            "titanic.redb",
            "--store: the requests and replies, one redb file, created if absent and checked \
             at start.",
        )),
        "keygen" => files.push((
            "NAME, NAME_secret",
            "The public certificate, and the one with both keys (mode 0600).",
        )),
        _ => {}
    }
    if ["call", "status", "top", "worker", "titanic"].contains(&command) {
        files.push((
            "NAME_secret",
            "--curve-key-file: this peer's CURVE key pair, a czmq certificate.",
        ));
    }
    files
}

fn signals(command: &str) -> Vec<(&'static str, &'static str)> {
    match command {
        "broker" => vec![
            (
                "SIGTERM, SIGINT",
                "Drain: take no new requests, serve what is queued and in flight for at most \
                 --drain-timeout, tell the workers DISCONNECT and exit 0. A second signal stops \
                 at once.",
            ),
            (
                "SIGHUP",
                "Reread --curve-clients and --access-rules without dropping a connection \
                 (counted in majordomo_reloads_total); ignored when neither is given.",
            ),
        ],
        "ppqueue" | "spqueue" | "flserver" => vec![
            ("SIGTERM, SIGINT", "Stop and exit 0."),
            (
                "SIGHUP",
                "Reread --curve-clients; ignored when it is not given.",
            ),
        ],
        "worker" | "titanic" => vec![
            (
                "SIGTERM, SIGINT",
                "Tell the broker DISCONNECT and exit 0; a request being handled is answered \
                 first if it is done.",
            ),
            ("SIGHUP", "Ignored."),
        ],
        _ => vec![("SIGTERM, SIGINT", "Stop at once.")],
    }
}

fn exit_status(command: &str) -> Vec<(&'static str, &'static str)> {
    let mut status = match command {
        "call" => vec![
            ("0", "The reply came, and was printed."),
            ("2", "No reply after every attempt."),
            (
                "3",
                "A reply in parts stopped before its last part (18/MDP streaming).",
            ),
        ],
        "status" => vec![
            (
                "0",
                "The broker answered (with --probe: it answered the probe).",
            ),
            (
                "2",
                "No answer within --timeout (with --probe: 1, as health checks expect).",
            ),
        ],
        _ => vec![("0", "Success (for a server: stopped by a signal).")],
    };
    status.push((
        "1",
        "An error, printed on stderr (a JSON log line with --log-format json): a bad \
         configuration, an endpoint that cannot be bound, a store that cannot be opened.",
    ));
    status.push(("2", "A usage error in the command line."));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(page: &[u8]) -> String {
        String::from_utf8(page.to_vec()).expect("roff is text")
    }

    #[test]
    fn every_command_has_a_page_with_environment_files_signals_and_exit_status() {
        let pages = pages();
        let cli = config::command();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("majordomo-{}", sub.get_name());
            let page = pages
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, page)| text(page))
                .unwrap_or_else(|| panic!("no page for {name}"));
            for heading in ["NAME", "SYNOPSIS", "ENVIRONMENT", "SIGNALS", "EXIT STATUS"] {
                assert!(
                    page.contains(&format!(".SH {heading}"))
                        || page.contains(&format!(".SH \"{heading}\"")),
                    "{name} has no {heading}"
                );
            }
            assert!(page.contains("RUST_LOG"), "{name}");
        }
        let overview = text(&pages[0].1);
        assert_eq!(pages[0].0, "majordomo");
        assert!(overview.contains("majordomo\\-broker(1)"), "{overview}");
    }

    #[test]
    fn a_server_page_names_its_variables_files_and_signals() {
        let pages = pages();
        let broker = pages
            .iter()
            .find(|(n, _)| n == "majordomo-broker")
            .map(|(_, page)| text(page))
            .expect("the broker's page");
        for expected in [
            "MAJORDOMO_BROKER_HEARTBEAT",
            "MAJORDOMO_CONFIG",
            "NOTIFY_SOCKET",
            ".SH FILES",
            "majordomo.toml",
            "SIGHUP",
            "drain\\-timeout",
        ] {
            assert!(broker.contains(expected), "no {expected} in\n{broker}");
        }
        let call = pages
            .iter()
            .find(|(n, _)| n == "majordomo-call")
            .map(|(_, page)| text(page))
            .expect("the call page");
        assert!(call.contains("No reply after every attempt"), "{call}");
        assert!(
            !call.contains("MAJORDOMO_CALL_"),
            "call reads no option variables"
        );
    }
}
