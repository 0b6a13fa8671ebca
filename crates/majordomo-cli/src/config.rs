//! Where a server's options come from: the command line, then `MAJORDOMO_<COMMAND>_<OPTION>`
//! environment variables, then the `[command]` table of a `--config` TOML file, then the
//! defaults. `--print-config` prints the result.
//!
//! Every server option is one source of truth, its clap definition: the environment variable is
//! derived from its long name (`--max-wait` of `broker` is `MAJORDOMO_BROKER_MAX_WAIT`), and a
//! file key is the long name too (`max-wait` or `max_wait`). A file value is applied only to an
//! option that neither the command line nor the environment set, and is checked by the option's
//! own parser, so a bad one names its key and the form expected.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::Cli;

/// The commands that take `--config` and read `MAJORDOMO_<COMMAND>_<OPTION>` variables.
pub(crate) const SERVERS: [&str; 5] = ["broker", "ppqueue", "spqueue", "worker", "titanic"];

/// Arguments that are about the configuration rather than part of it.
const META: [&str; 4] = ["help", "version", "config", "print_config"];

/// The command with every server option readable from its environment variable.
pub(crate) fn command() -> Command {
    let mut cli = Cli::command().mut_arg("log_format", |a| a.env("MAJORDOMO_LOG_FORMAT"));
    for server in SERVERS {
        cli = cli.mut_subcommand(server, |mut sub| {
            let ids: Vec<String> = options(&sub).map(|a| a.get_id().to_string()).collect();
            for id in ids {
                sub = sub.mut_arg(id, |a| {
                    let long = a.get_long().unwrap_or_default();
                    let name = format!("MAJORDOMO_{server}_{long}")
                        .to_uppercase()
                        .replace('-', "_");
                    // A repeatable option takes a comma-separated list from its variable
                    // (`MAJORDOMO_BROKER_BIND=tcp://a:5555,tcp://b:5555`; no endpoint has a
                    // comma).
                    let a = if matches!(a.get_action(), ArgAction::Append) {
                        a.value_delimiter(',')
                    } else {
                        a
                    };
                    // clap takes environment variable names as static strings; a few dozen are
                    // made once per run.
                    a.env(&*Box::leak(name.into_boxed_str()))
                });
            }
            sub
        });
    }
    cli
}

/// The options of a server command that a file or the environment may set.
fn options(sub: &Command) -> impl Iterator<Item = &clap::Arg> {
    sub.get_arguments()
        .filter(|a| a.get_long().is_some() && !META.contains(&a.get_id().as_str()))
}

/// Parses the process's arguments with the environment and any `--config` file, and handles
/// `--print-config`. Errors in the command line exit as clap does.
pub(crate) fn parse() -> Result<Cli> {
    check_environment(&command(), std::env::vars_os().map(|(name, _)| name))?;
    check_environment_values()?;
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut matches = command().get_matches_from(&argv);
    if let Some((server, sub)) = matches.subcommand() {
        if SERVERS.contains(&server) {
            let server = server.to_owned();
            let sub = sub.clone();
            if let Some(path) = sub.get_one::<std::path::PathBuf>("config") {
                let extra = from_file(path, &server, &sub)?;
                let mut argv = argv.clone();
                // Right after the command's name: after it, `worker exec` takes the program's
                // own arguments.
                let at = argv
                    .iter()
                    .position(|a| a.to_str() == Some(server.as_str()))
                    .map_or(argv.len(), |i| i + 1);
                argv.splice(at..at, extra);
                matches = command().get_matches_from(&argv);
            }
            let (_, sub) = matches.subcommand().context("the server command")?;
            if sub.get_flag("print_config") {
                print!("{}", effective(&server, sub));
                std::process::exit(0);
            }
        }
    }
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Refuses a `MAJORDOMO_*` variable among `names` that no option reads: misspelt, it would
/// otherwise be ignored without a word. The closest known name is suggested.
fn check_environment(cli: &Command, names: impl Iterator<Item = OsString>) -> Result<()> {
    let known: Vec<String> = cli
        .get_arguments()
        .chain(cli.get_subcommands().flat_map(|sub| sub.get_arguments()))
        .filter_map(|arg| arg.get_env())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .collect();
    for name in names {
        let Some(name) = name.to_str() else {
            continue;
        };
        if !name.starts_with("MAJORDOMO_") || known.iter().any(|k| k == name) {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (strsim::levenshtein(k, name), k))
            .min()
            .filter(|(distance, _)| *distance <= 3);
        match closest {
            Some((_, suggestion)) => {
                bail!("unknown environment variable {name}: did you mean {suggestion}?")
            }
            None => bail!(
                "unknown environment variable {name}: no option reads it (`majordomo help <command>` names each option's variable)"
            ),
        }
    }
    Ok(())
}

/// Checks each server option's variable that is set with the option's own parser, alone, so
/// that a bad value is blamed on the variable (clap would name the flag).
fn check_environment_values() -> Result<()> {
    let cli = command();
    for server in SERVERS {
        let Some(sub) = cli.find_subcommand(server) else {
            continue;
        };
        for arg in options(sub) {
            let (Some(name), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let Some(value) = std::env::var_os(name) else {
                continue;
            };
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                // clap reads a flag's variable as a boolean: only that is checked.
                let text = value.to_string_lossy().to_lowercase();
                let booleans = [
                    "true", "false", "t", "f", "1", "0", "yes", "no", "y", "n", "on", "off", "",
                ];
                if !booleans.contains(&text.as_str()) {
                    bail!(
                        "{}={}: expected true or false",
                        name.to_string_lossy(),
                        value.to_string_lossy()
                    );
                }
                continue;
            }
            let args = [OsString::from(format!("--{long}")), value];
            if let Err(why) = check_alone(server, &args) {
                bail!("{}: {why}", name.to_string_lossy());
            }
        }
    }
    Ok(())
}

/// Parses `args` given to `server` alone, so that the option's own parser judges its value and
/// the error is about that option only: clap's first line of it.
fn check_alone(server: &str, args: &[OsString]) -> Result<(), String> {
    let mut alone: Vec<OsString> = vec!["majordomo".into(), server.into()];
    alone.extend(args.iter().cloned());
    let cli = command();
    // A command that needs a subcommand (`worker echo`) gets its first, which takes no
    // arguments of its own.
    if let Some(first) = cli
        .find_subcommand(server)
        .and_then(|sub| sub.get_subcommands().next())
    {
        alone.push(first.get_name().into());
    }
    cli.try_get_matches_from(&alone)
        .map(|_| ())
        .map_err(|error| {
            let why = error.render().to_string();
            why.lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned()
        })
}

/// The arguments the `[server]` table of the file at `path` adds: one per key whose option was
/// not set on the command line or in the environment. Unknown keys and bad values are errors
/// naming the key.
fn from_file(path: &Path, server: &str, given: &ArgMatches) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration {}", path.display()))?;
    let file: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", path.display()))?;
    for key in file.keys() {
        if !SERVERS.contains(&key.as_str()) {
            bail!(
                "{}: unknown table [{key}] (the tables are {})",
                path.display(),
                SERVERS.join(", ")
            );
        }
    }
    let Some(table) = file.get(server) else {
        return Ok(Vec::new());
    };
    let table = table
        .as_table()
        .with_context(|| format!("{}: [{server}] must be a table", path.display()))?;
    let sub = command()
        .find_subcommand(server)
        .cloned()
        .context("a server command")?;
    let mut extra = Vec::new();
    let cli = command();
    let log_format = cli
        .get_arguments()
        .find(|a| a.get_id() == "log_format")
        .context("the --log-format option")?;
    for (key, value) in table {
        let long = key.replace('_', "-");
        // `log-format` is every command's, and may be set in a server's table too.
        let arg = match options(&sub).find(|a| a.get_long() == Some(long.as_str())) {
            Some(arg) => arg,
            None if log_format.get_long() == Some(long.as_str()) => log_format,
            None => bail!("{}: unknown key {server}.{key}", path.display()),
        };
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let args = as_args(&long, value, flag)
            .map_err(|error| anyhow::anyhow!("{}: {server}.{key}: {error}", path.display()))?;
        if let Err(why) = check_alone(server, &args) {
            bail!("{}: {server}.{key}: {why}", path.display());
        }
        extra.extend(args);
    }
    Ok(extra)
}

/// `--long value` for a TOML value: strings as they are, numbers and booleans as written, an
/// array as the option repeated; a flag is `true` or `false`.
fn as_args(long: &str, value: &toml::Value, flag: bool) -> Result<Vec<OsString>> {
    let option = format!("--{long}");
    if flag {
        return match value.as_bool() {
            Some(true) => Ok(vec![option.into()]),
            Some(false) => Ok(Vec::new()),
            None => bail!("expected true or false"),
        };
    }
    let one = |v: &toml::Value| -> Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => bail!("expected a string or a number"),
        })
    };
    let values = match value {
        toml::Value::Array(items) => items.iter().map(one).collect::<Result<Vec<_>>>()?,
        other => vec![one(other)?],
    };
    Ok(values
        .into_iter()
        .flat_map(|v| [OsString::from(&option), OsString::from(v)])
        .collect())
}

/// The `[server]` table of the effective configuration, every option with the value in force.
fn effective(server: &str, sub: &ArgMatches) -> String {
    let command = command();
    let Some(definition) = command.find_subcommand(server) else {
        return String::new();
    };
    let mut table = toml::Table::new();
    for arg in options(definition) {
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or(id);
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            table.insert(long.to_owned(), toml::Value::Boolean(sub.get_flag(id)));
            continue;
        }
        let Some(raw) = sub.get_raw(id) else {
            continue;
        };
        let values: Vec<toml::Value> = raw
            .map(|v| {
                let v = v.to_string_lossy();
                match v.parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(v.into_owned()),
                }
            })
            .collect();
        let value = if matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(values)
        } else {
            match values.into_iter().next() {
                Some(v) => v,
                None => continue,
            }
        };
        table.insert(long.to_owned(), value);
    }
    if let Some(format) = sub.get_raw("log_format").and_then(|mut v| v.next()) {
        let format = format.to_string_lossy().into_owned();
        table.insert("log-format".to_owned(), toml::Value::String(format));
    }
    let mut file = toml::Table::new();
    file.insert(server.to_owned(), toml::Value::Table(table));
    toml::to_string(&file).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(names: &'a [&'a str]) -> impl Iterator<Item = OsString> + 'a {
        names.iter().map(OsString::from)
    }

    #[test]
    fn a_misspelt_environment_variable_is_an_error_naming_the_right_one() {
        let cli = command();
        assert!(check_environment(
            &cli,
            names(&[
                "PATH",
                "MAJORDOMO_BROKER_HEARTBEAT",
                "MAJORDOMO_CONFIG",
                "MAJORDOMO_LOG_FORMAT"
            ])
        )
        .is_ok());
        let error = check_environment(&cli, names(&["MAJORDOMO_BROKER_HEARTBAET"]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("MAJORDOMO_BROKER_HEARTBAET")
                && error.contains("did you mean MAJORDOMO_BROKER_HEARTBEAT"),
            "{error}"
        );
        let error = check_environment(&cli, names(&["MAJORDOMO_SOMETHING_ELSE_ENTIRELY"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no option reads it"), "{error}");
    }
}
