//! No input makes backhaul panic: arbitrary strings in every environment variable and flag of
//! every command (read from each command's `--help`, so a new option is covered without
//! editing this file) end in exit 0 or 2 — or 1 for commands that must reach a service or
//! find a backup, which here cannot be — never 101, and a failure is one `error:` line (or,
//! for a failure already reported per item, an ERROR log line).
//!
//! Nothing real is reachable: AWS points at a closed local port, the destination is an empty
//! temporary directory, `backup`, `prune`, `restore-globals` and `schedule` run with
//! `--dry-run`, and restores target a closed local port.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::common::*;

/// The command line each case starts from: valid and offline (see the module doc). The bool
/// says whether the command must reach a service (AWS) to succeed, so exit 1 is its answer
/// to the closed port.
const COMMANDS: &[(&[&str], bool)] = &[
    (&["backup", "--dry-run"], false),
    (&["list"], false),
    (&["prune", "--keep-last", "3", "--dry-run"], false),
    (&["verify", "--since", "7d"], true),
    (
        &["restore", "latest", "--to", "postgresql://u@127.0.0.1:9/d"],
        true,
    ),
    (&["restore-globals", "latest", "--dry-run"], true),
    (&["schedule", "--dry-run"], true),
    (&["unschedule"], true),
    (&["run-task"], true),
    (&["status"], true),
    (&["logs"], true),
];

/// Settings the help does not show: secrets (environment only), hidden ones, and the AWS
/// settings backhaul reads itself. `AWS_ENDPOINT_URL` is left out on purpose: an arbitrary
/// value could point at a real host.
const EXTRA_ENV: &[&str] = &[
    "PG_DB_PASSWORD",
    "POSTGRES_SECRET",
    "BACKHAUL_POLL_INTERVAL",
    "BACKHAUL_S3_ATTEMPT_TIMEOUT",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_REGION",
];

/// Values that have broken or nearly broken parsers, beside arbitrary strings. None names a
/// reachable host.
const TRICKY: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "abc",
    "maybe",
    "yes",
    "99999999999999999999999",
    "1e3",
    "a\nb",
    "\r",
    "prod-",
    "db:5432",
    "127.0.0.1:56433",
    "[::1",
    "[::1]:x",
    "::",
    "%zz",
    "%00",
    "s3://x",
    "s3://",
    "file://",
    "file:///nonexistent/dir",
    "postgresql://",
    "postgresql://@:0/",
    "mongodb://",
    "{",
    "{\"host\":\"db.example.com:5432\"}",
    "[",
    "=",
    "a=b=c",
    "rate(",
    "cron(* * * * * *)",
    "--help",
    "-",
    "é",
    "\u{202e}",
    "🦀",
];

struct Setting {
    command: usize,
    /// `--flag` or an environment variable.
    name: String,
    flag: bool,
}

/// Every flag and variable of every command, from its `--help`.
fn settings() -> &'static [Setting] {
    static S: OnceLock<Vec<Setting>> = OnceLock::new();
    S.get_or_init(|| {
        let mut out = Vec::new();
        for (i, (args, _)) in COMMANDS.iter().enumerate() {
            let help = backhaul().args([args[0], "--help"]).output().unwrap();
            let text = String::from_utf8_lossy(&help.stdout);
            let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut flags = BTreeSet::new();
            let mut vars: BTreeSet<String> = EXTRA_ENV.iter().map(|s| s.to_string()).collect();
            for word in flat.split(' ') {
                let w = word.trim_end_matches([',', '.']);
                if let Some(f) = w.strip_prefix("--") {
                    let f = f.split(['=', '<', '[']).next().unwrap_or("");
                    if !f.is_empty() && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                        flags.insert(format!("--{f}"));
                    }
                }
            }
            for part in flat.split("[env: ").skip(1) {
                if let Some((var, _)) = part.split_once('=') {
                    vars.insert(var.trim().to_string());
                }
            }
            flags.remove("--help");
            flags.remove("--version");
            vars.remove("AWS_ENDPOINT_URL");
            out.extend(flags.into_iter().map(|name| Setting {
                command: i,
                name,
                flag: true,
            }));
            out.extend(vars.into_iter().map(|name| Setting {
                command: i,
                name,
                flag: false,
            }));
        }
        assert!(
            out.len() > 150,
            "help parsing found too few settings: {}",
            out.len()
        );
        out
    })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(TRICKY).prop_map(str::to_string),
        "[^\\x00]{0,40}",
    ]
}

/// Runs one case and checks the promise; `Err` describes a broken one.
fn check(s: &Setting, v: &str, dest: &str) -> Result<(), String> {
    let (args, online) = COMMANDS[s.command];
    let mut cmd = backhaul();
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("STAGE", "prod")
        .env("BACKUP_DEST", dest)
        .env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_PORT", "9")
        .env("PG_DB_USER", "app")
        .env("PG_DB_NAME", "app")
        .timeout(std::time::Duration::from_secs(60))
        .args(args);
    if s.flag {
        cmd.arg(format!("{}={v}", s.name));
    } else {
        cmd.env(&s.name, v);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!("{} with {}={v:?}: {:?}", args.join(" "), s.name, out.status);
    let code = out
        .status
        .code()
        .ok_or_else(|| format!("{what}: killed by a signal\n{stderr}"))?;
    let allowed: &[i32] = if online { &[0, 1, 2] } else { &[0, 2] };
    if !allowed.contains(&code) {
        return Err(format!("{what}: exit {code}\n{stderr}"));
    }
    if code != 0 {
        // Log lines (JSON, or text when a case asks for it) are not the error line. A failure
        // already reported per item (e.g. "no backups to verify") is an ERROR log line instead.
        let is_log = |l: &str| {
            l.starts_with('{')
                || (l.len() > 5 && l[..4].bytes().all(|b| b.is_ascii_digit()) && &l[4..5] == "-")
        };
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !is_log(l))
            .collect();
        let reported = lines.is_empty() && stderr.lines().any(|l| is_log(l) && l.contains("ERROR"));
        if !reported && (lines.len() != 1 || !lines[0].starts_with("error: ")) {
            return Err(format!("{what}: not one error line:\n{stderr}"));
        }
    }
    Ok(())
}

#[test]
fn no_input_panics_and_every_failure_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", dir.path().display());
    let n = settings().len();
    let cases = std::env::var("BACKHAUL_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(0..n, value()), |(i, v)| {
            check(&settings()[i], &v, &dest).map_err(TestCaseError::fail)
        })
        .unwrap();
}
