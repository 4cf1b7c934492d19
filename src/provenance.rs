//! Where each setting came from, so an error names what the user typed.
//!
//! Configuration code names a setting by its environment variable (`BACKUP_TIMEOUT`) or by
//! its flag (`--stage`), whichever it knows; it cannot know which of the two the user used.
//! clap does: after parsing, each argument's value source is either the command line or the
//! environment. This table, built once from the parsed command line (ripgrep's "low args →
//! high args" step, in miniature), renames the setting in a configuration error to the form
//! the value came from — the flag when typed, the variable when set — and names both when
//! the setting was given neither way.

use clap::parser::ValueSource;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    flag: Option<String>,
    env: Option<String>,
    source: Option<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Flag,
    Env,
}

/// The settings of the subcommand that ran (and the global ones).
#[derive(Debug, Default, Clone)]
pub struct Provenance {
    settings: Vec<Setting>,
}

impl Provenance {
    pub fn from_matches(cmd: &clap::Command, matches: &clap::ArgMatches) -> Provenance {
        let mut settings = Vec::new();
        collect(cmd, matches, &mut settings);
        if let Some((name, sub)) = matches.subcommand() {
            if let Some(sub_cmd) = cmd.find_subcommand(name) {
                collect(sub_cmd, sub, &mut settings);
            }
        }
        Provenance { settings }
    }

    /// How an error should name the setting it calls `var`.
    pub fn name(&self, var: &str) -> Option<String> {
        let s = self
            .settings
            .iter()
            .find(|s| s.env.as_deref() == Some(var) || s.flag.as_deref() == Some(var))?;
        match (s.source, &s.flag, &s.env) {
            (Some(Source::Flag), Some(f), _) => Some(f.clone()),
            (Some(Source::Env), _, Some(e)) => Some(e.clone()),
            // Given neither way: both, in the order the code named them.
            (None, Some(f), Some(e)) if f == var => Some(format!("{f} (or {e})")),
            (None, Some(f), Some(e)) => Some(format!("{e} (or {f})")),
            _ => None,
        }
    }

    /// Renames the setting at the start of a rendered configuration error ("VAR message").
    pub fn rewrite(&self, var: &str, rendered: &str) -> String {
        let Some(name) = self.name(var).filter(|n| n != var) else {
            return rendered.to_string();
        };
        // "X (or Y)" adds nothing when the message already names Y.
        let other = name
            .strip_prefix(&format!("{var} (or "))
            .and_then(|r| r.strip_suffix(')'));
        if other.is_some_and(|o| rendered.contains(o)) {
            return rendered.to_string();
        }
        rendered.replacen(&format!("{var} "), &format!("{name} "), 1)
    }
}

/// clap's own error as one line: its first paragraph (some kinds continue it on indented
/// lines, e.g. the missing arguments), its suggestion as "did you mean", the environment
/// variable instead of the flag when the bad value came from the environment (clap names the
/// flag either way), and the `--help` of the command being parsed.
pub fn usage_line(cmd: &clap::Command, e: &clap::Error, argv: &[String]) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = e.render().to_string();
    let mut line = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let sub = argv
        .iter()
        .find_map(|a| cmd.find_subcommand(a))
        .filter(|s| s.get_name() != "help");
    let suggested = [ContextKind::SuggestedArg, ContextKind::SuggestedSubcommand]
        .into_iter()
        .find_map(|k| match e.get(k) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            Some(ContextValue::Strings(v)) => v.first().cloned(),
            _ => None,
        });
    if let Some(s) = suggested {
        line.push_str(&format!("; did you mean '{s}'?"));
    }
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        if let Some(var) = from_env(cmd, sub, arg, argv) {
            line = line.replacen(&format!("'{arg}'"), &var, 1);
        }
    }
    let help = match sub {
        Some(s) => format!("backhaul {} --help", s.get_name()),
        None => "backhaul --help".to_string(),
    };
    format!("{line} (see {help})")
}

/// The variable that supplied `arg` ("--parallel <PARALLEL>"), when the flag was not typed.
fn from_env(
    cmd: &clap::Command,
    sub: Option<&clap::Command>,
    arg: &str,
    argv: &[String],
) -> Option<String> {
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let found = sub
        .into_iter()
        .flat_map(|s| s.get_arguments())
        .chain(cmd.get_arguments())
        .find(|a| a.get_long() == Some(long))?;
    let var = found.get_env()?.to_string_lossy().to_string();
    let flag = format!("--{long}");
    let typed = argv
        .iter()
        .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
    (!typed && std::env::var_os(&var).is_some()).then_some(var)
}

fn collect(cmd: &clap::Command, matches: &clap::ArgMatches, out: &mut Vec<Setting>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let source = match matches.try_get_raw(id) {
            Ok(Some(_)) => match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Some(Source::Flag),
                Some(ValueSource::EnvVariable) => Some(Source::Env),
                _ => None,
            },
            _ => None,
        };
        out.push(Setting {
            flag: arg.get_long().map(|l| format!("--{l}")),
            env: arg.get_env().map(|e| e.to_string_lossy().to_string()),
            source,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn provenance(args: &[&str]) -> Provenance {
        let cmd = crate::cli::Cli::command();
        let m = cmd.clone().try_get_matches_from(args).unwrap();
        Provenance::from_matches(&cmd, &m)
    }

    #[test]
    fn usage_errors_suggest_and_point_at_the_command_help() {
        let cmd = crate::cli::Cli::command();
        let line = |args: &[&str]| {
            let e = cmd.clone().try_get_matches_from(args).unwrap_err();
            let argv: Vec<String> = args[1..].iter().map(|a| a.to_string()).collect();
            usage_line(&cmd, &e, &argv)
        };
        assert_eq!(
            line(&["backhaul", "backup", "--buckt", "x"]),
            "error: unexpected argument '--buckt' found; did you mean '--bucket'? (see backhaul backup --help)"
        );
        assert_eq!(
            line(&["backhaul", "bakup"]),
            "error: unrecognized subcommand 'bakup'; did you mean 'backup'? (see backhaul --help)"
        );
        // Typed, so named as typed.
        assert_eq!(
            line(&["backhaul", "backup", "--parallel", "two"]),
            "error: invalid value 'two' for '--parallel <PARALLEL>': invalid digit found in string (see backhaul backup --help)"
        );
        // A switch takes no value on the command line (its variable takes true/false/...).
        assert!(line(&["backhaul", "list", "--s3-force-path-style=maybe"])
            .ends_with("(see backhaul list --help)"));
    }

    #[test]
    fn a_typed_flag_is_named_by_its_flag() {
        let p = provenance(&["backhaul", "backup", "--timeout", "45"]);
        assert_eq!(p.name("BACKUP_TIMEOUT").as_deref(), Some("--timeout"));
        assert_eq!(
            p.rewrite("BACKUP_TIMEOUT", "BACKUP_TIMEOUT \"45\" is not a duration"),
            "--timeout \"45\" is not a duration"
        );
        // Given neither way: both names.
        assert_eq!(
            p.name("PG_DB_USER").as_deref(),
            Some("PG_DB_USER (or --pg-user)")
        );
        // A name the table does not know is left alone.
        assert_eq!(
            p.rewrite("POSTGRES_SECRET", "POSTGRES_SECRET x"),
            "POSTGRES_SECRET x"
        );
    }
}
