//! `--help` is the reference documentation: each subcommand's help, reviewed as a snapshot,
//! lists exactly the options that command uses, and examples that survive copy-paste.

use crate::common::backhaul;

const COMMANDS: &[&str] = &[
    "backup",
    "restore",
    "restore-globals",
    "list",
    "verify",
    "prune",
    "schedule",
    "unschedule",
    "run-task",
    "status",
    "logs",
];

fn help(args: &[&str]) -> String {
    let out = backhaul().args(args).arg("--help").assert().success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

#[test]
fn every_subcommand_help_is_reviewed() {
    insta::assert_snapshot!("help_top", help(&[]));
    for c in COMMANDS {
        insta::assert_snapshot!(format!("help_{c}"), help(&[c]));
    }
}

/// Options a command does not use are not offered to it.
#[test]
fn read_commands_do_not_list_backup_only_options() {
    let backup_only = [
        "--sse",
        "--part-size-mib",
        "--upload-concurrency",
        "--pg-dump-arg",
        "--mongodump-arg",
        "--min-free-mib",
        "--pg-host",
        "--compression",
    ];
    for c in ["restore", "verify", "prune", "status", "list"] {
        let text = help(&[c]);
        for flag in backup_only {
            assert!(
                !text.contains(&format!("{flag} ")) && !text.contains(&format!("{flag}\n")),
                "{c} --help lists {flag}"
            );
        }
        assert!(!text.contains("to write"), "{c}: {text}");
    }
    assert!(help(&["backup"]).contains("S3 bucket to write the backups to"));
}

/// Every example line fits clap's 100 columns, so clap never re-wraps one (long commands are
/// split with explicit ` \` continuations) and a copied example runs as shown.
#[test]
fn examples_are_copyable() {
    for c in COMMANDS {
        let text = help(&[c]);
        let examples = text.split("Examples:").nth(1).unwrap_or_default();
        for line in examples.lines() {
            assert!(line.len() <= 100, "{c}: {line:?}");
        }
    }
}

fn short_help(args: &[&str]) -> String {
    let out = backhaul().args(args).arg("-h").assert().success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

/// `-h` fits on a screen: usage, the main options and two examples, pointing at `--help`,
/// which keeps every option and example.
#[test]
fn dash_h_is_the_short_help() {
    insta::assert_snapshot!("short_help_top", short_help(&[]));
    insta::assert_snapshot!("short_help_backup", short_help(&["backup"]));
    insta::assert_snapshot!("short_help_restore", short_help(&["restore"]));
    for c in COMMANDS {
        let short = short_help(&[c]);
        let long = help(&[c]);
        assert!(short.lines().count() <= 40, "{c} -h:\n{short}");
        assert!(short.lines().count() < long.lines().count(), "{c}");
        assert!(short.contains("see more with '--help'"), "{c}: {short}");
        let examples = short.split("Examples:").nth(1).expect("examples");
        let commands = examples.lines().filter(|l| l.contains("backhaul ")).count();
        assert_eq!(commands, 2, "{c}: {short}");
        for line in short.lines() {
            assert!(line.chars().count() <= 100, "{c}: {line:?}");
        }
        // Everything -h shows, --help shows too.
        for flag in short.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches(|ch: char| !ch.is_ascii_alphanumeric());
            assert!(long.contains(flag), "{c}: {flag}");
        }
    }
    assert!(help(&["restore"]).contains("--lock-timeout"));
    assert!(!short_help(&["restore"]).contains("--lock-timeout"));
}
