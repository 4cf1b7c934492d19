//! `-h` is the short help: the usage, the options most runs need and two examples, so it fits
//! on a screen; `--help` stays the full reference (every option, every example). The choice
//! of options lives here, in one table, instead of a `hide_short_help` on each option in cli.rs.
//!
//! Two command trees that parse alike: once any option is hidden from `-h` only, clap would
//! render `--help` in its spread-out "long" layout (twice the lines); `--help` (and `help
//! <command>`) are parsed with the plain tree instead, so the full help stays as compact as it
//! was.

use std::ffi::OsString;

use clap::{Command, CommandFactory};

/// The command tree for this command line: the plain one when the full help is asked for.
pub fn command(argv: &[OsString]) -> Command {
    let full = argv.get(1).is_some_and(|a| a == "help")
        || argv
            .iter()
            .skip(1)
            .take_while(|a| *a != "--")
            .any(|a| a == "--help");
    let cmd = crate::cli::Cli::command();
    if full {
        cmd
    } else {
        apply(cmd)
    }
}

/// Per subcommand: the options `-h` shows (clap argument ids; positionals and `--help` are
/// always shown) and its two examples.
const SHORT: &[(&str, &[&str], &str)] = &[
    (
        "backup",
        &["bucket", "stage", "dest", "pg_url", "mongo_uri", "dry_run"],
        "Examples:
  S3_BUCKET=acme-backups STAGE=prod DATABASE_URL=postgresql://app:...@db/app backhaul backup
  backhaul backup --dest file:///mnt/efs/backups --stage dev --dry-run",
    ),
    (
        "restore",
        &["to", "stage", "bucket", "database", "kind", "clean", "jobs"],
        "Examples:
  backhaul list --stage prod        # the ID column names each backup
  backhaul restore 3f9a1c2e --stage prod --to postgresql://app@localhost/app_restored",
    ),
    (
        "restore-globals",
        &["to", "stage", "bucket", "dry_run"],
        "Examples:
  backhaul restore-globals latest --stage prod --dry-run
  backhaul restore-globals latest --stage prod --to postgresql://postgres@new-cluster/postgres",
    ),
    (
        "list",
        &["stage", "bucket", "database", "kind", "json", "locks"],
        "Examples:
  backhaul list --stage prod
  backhaul list --stage prod --kind postgres --database app --json",
    ),
    (
        "verify",
        &["since", "stage", "bucket", "database", "restore_into"],
        "Examples:
  backhaul verify latest --stage prod --database app
  backhaul verify --since 7d --stage prod",
    ),
    (
        "prune",
        &[
            "stage",
            "bucket",
            "keep_last",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "dry_run",
        ],
        "Examples:
  backhaul prune --stage prod --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run
  backhaul prune --stage dev --keep-last 3",
    ),
    (
        "schedule",
        &[
            "from_stack",
            "stage",
            "schedule",
            "timezone",
            "image",
            "env",
            "secrets",
            "dry_run",
        ],
        "Examples:
  backhaul schedule --from-stack backhaul-prod
  backhaul schedule --from-stack backhaul-prod --timezone Europe/Berlin --dry-run",
    ),
    (
        "unschedule",
        &["stage", "deregister"],
        "Examples:
  backhaul unschedule --stage dev
  backhaul unschedule --stage dev --deregister",
    ),
    (
        "run-task",
        &["stage", "wait", "env"],
        "Examples:
  backhaul run-task --stage prod --wait
  backhaul run-task --stage dev --env BACKUP_PARALLEL=2",
    ),
    (
        "status",
        &["stage", "bucket", "json"],
        "Examples:
  backhaul status --stage prod
  backhaul status --stage prod --json",
    ),
    (
        "logs",
        &["stage", "follow", "runs", "task"],
        "Examples:
  backhaul logs --stage prod --follow
  backhaul logs --stage prod --runs 7",
    ),
];

const TOP_EXAMPLES: &str = "Examples:
  S3_BUCKET=acme-backups STAGE=prod DATABASE_URL=postgresql://app:...@db/app backhaul backup
  backhaul restore latest --stage prod --database app --to postgresql://app@localhost/app_copy

`backhaul <command> -h` for a command's main options, `--help` for all of them.";

/// Arguments `-h` always shows.
const ALWAYS: &[&str] = &["help", "version"];

/// Sets up `-h` versus `--help` on the parsed command tree: the full examples move to
/// `after_long_help`, and options outside the table are hidden from `-h` only.
pub fn apply(cmd: Command) -> Command {
    let mut cmd = with_examples(cmd, TOP_EXAMPLES).mut_args(|a| a.hide_short_help(true));
    for (name, shown, examples) in SHORT {
        cmd = cmd.mut_subcommand(name, |sub| {
            with_examples(sub, examples).mut_args(|a| {
                let keep = a.is_positional()
                    || ALWAYS.contains(&a.get_id().as_str())
                    || shown.contains(&a.get_id().as_str());
                a.hide_short_help(!keep)
            })
        });
    }
    cmd
}

/// `examples` after `-h`; the command's own after-help text (its full examples) after `--help`.
fn with_examples(cmd: Command, examples: &'static str) -> Command {
    let long = cmd.get_after_help().cloned();
    let cmd = cmd.after_help(examples);
    match long {
        Some(long) => cmd.after_long_help(long),
        None => cmd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command has an entry, and every id in the table is an option of its command
    /// (a renamed field would otherwise silently drop out of `-h`).
    #[test]
    fn the_table_names_real_commands_and_options() {
        let cmd = crate::cli::Cli::command();
        let subs: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        let listed: Vec<&str> = SHORT.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(subs, listed);
        for (name, shown, examples) in SHORT {
            let sub = cmd.find_subcommand(name).unwrap();
            for id in *shown {
                assert!(
                    sub.get_arguments().any(|a| a.get_id() == *id),
                    "{name}: no option {id}"
                );
            }
            let commands = examples
                .lines()
                .filter(|l| l.trim_start().starts_with("backhaul ") || l.contains(" backhaul "))
                .count();
            assert_eq!(commands, 2, "{name}: two examples");
        }
    }
}
