//! A recognisable password goes through every way backhaul is configured and every command
//! that touches it, successful or failing; it must never show up in what backhaul prints, in
//! pg_dump's command line, or in a manifest.

use std::path::Path;

use crate::common::*;

const PASSWORD: &str = "Rec0gnisable-S3cret!/p@ss";
const PASSWORD_ENC: &str = "Rec0gnisable-S3cret%21%2Fp%40ss";
/// Any encoding of the password (raw, percent-encoded, JSON-escaped) contains this.
const MARKER: &str = "Rec0gnisable";
const SECRET_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:x-AbCdEf";

/// Everything captured so far, by where it came from.
#[derive(Default)]
struct Captured(Vec<(String, String)>);

impl Captured {
    fn add(&mut self, label: impl Into<String>, text: impl Into<String>) {
        self.0.push((label.into(), text.into()));
    }

    /// Runs `cmd`, keeps its stdout and stderr, and returns the output for further checks.
    fn run(&mut self, label: &str, cmd: &mut assert_cmd::Command) -> std::process::Output {
        let out = cmd.output().unwrap();
        self.add(
            format!("{label} stdout"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.add(
            format!("{label} stderr"),
            String::from_utf8_lossy(&out.stderr),
        );
        out
    }

    /// Proves the capture holds what the scenario should have produced (so a clean scan
    /// means something).
    fn assert_contains(&self, label: &str, needle: &str) {
        let (_, text) = self.0.iter().find(|(l, _)| l == label).expect(label);
        assert!(text.contains(needle), "{label} lacks {needle:?}:\n{text}");
    }

    fn leaks(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, text)| {
                text.contains(MARKER) || text.contains(PASSWORD) || text.contains(PASSWORD_ENC)
            })
            .map(|(label, text)| format!("--- {label}:\n{text}"))
            .collect()
    }
}

fn url(pg: &Pg, db: &str) -> String {
    format!("postgresql://app:{PASSWORD_ENC}@127.0.0.1:{}/{db}", pg.port)
}

/// backhaul against moto with pg_dump wrapped by the argv logger.
fn traced(pg: &Pg, bucket: &str, argv_log: &Path) -> assert_cmd::Command {
    let mut cmd = backhaul_moto();
    cmd.env("S3_BUCKET", bucket)
        .env("STAGE", "prod")
        .env("BACKHAUL_LOG", "debug")
        .env(
            "PG_DUMP_PATH",
            tests_dir().join("fixtures/pg_dump_argv_logger"),
        )
        .env("REAL_PG_DUMP", pg.bin.join("pg_dump"))
        .env("ARGV_LOG", argv_log);
    cmd
}

fn store(bucket: &str) -> assert_cmd::Command {
    let mut cmd = backhaul_moto();
    cmd.env("S3_BUCKET", bucket)
        .env("STAGE", "prod")
        .env("BACKHAUL_LOG", "debug");
    cmd
}

fn expect(out: &std::process::Output, code: i32, label: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Backups configured three ways, plus a failing one and a dry run.
fn backups(pg: &Pg, buckets: &[String; 3], argv_log: &Path, seen: &mut Captured) {
    let mut cmd = traced(pg, &buckets[0], argv_log);
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    let out = seen.run("backup PG_DB_*", cmd.arg("backup"));
    expect(&out, 0, "backup PG_DB_*");

    let out = seen.run(
        "backup DATABASE_URL",
        traced(pg, &buckets[1], argv_log)
            .env("DATABASE_URL", url(pg, "app"))
            .arg("backup"),
    );
    expect(&out, 0, "backup DATABASE_URL");

    let secret = serde_json::json!({"username": "app", "password": PASSWORD, "host": "127.0.0.1",
        "port": pg.port, "dbname": "app", "engine": "postgres"});
    let out = seen.run(
        "backup POSTGRES_SECRET",
        traced(pg, &buckets[2], argv_log)
            .env("POSTGRES_SECRET", secret.to_string())
            .arg("backup"),
    );
    expect(&out, 0, "backup POSTGRES_SECRET");

    let mut cmd = traced(pg, &buckets[0], argv_log);
    pg_env(&mut cmd, pg, "app", PASSWORD, "no_such_db");
    let out = seen.run("backup wrong db", cmd.arg("backup"));
    expect(&out, 1, "backup wrong db");

    let mut cmd = traced(pg, &buckets[0], argv_log);
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    let out = seen.run("backup --dry-run", cmd.args(["backup", "--dry-run"]));
    expect(&out, 0, "backup --dry-run");
}

/// Reading back: list, verify (plain and restoring), restore, and a refused restore.
fn reads(pg: &Pg, bucket: &str, seen: &mut Captured) {
    let out = seen.run("list", store(bucket).arg("list"));
    expect(&out, 0, "list");
    let out = seen.run("verify latest", store(bucket).args(["verify", "latest"]));
    expect(&out, 0, "verify latest");
    pg.create_db("scratch");
    let out = seen.run(
        "verify --restore-into",
        store(bucket).args(["verify", "latest", "--restore-into", &url(pg, "scratch")]),
    );
    expect(&out, 0, "verify --restore-into");
    pg.create_db("restored");
    let to = url(pg, "restored");
    let out = seen.run(
        "restore",
        store(bucket).args(["restore", "latest", "--to", &to]),
    );
    expect(&out, 0, "restore");
    let out = seen.run(
        "restore into non-empty",
        store(bucket).args(["restore", "latest", "--to", &to]),
    );
    expect(&out, 1, "restore into non-empty");
}

/// `schedule`: a dry run with the password in backhaul's own environment (it must not be
/// copied into the plan), and a plaintext URL refused without echoing it.
fn schedule(pg: &Pg, seen: &mut Captured) {
    let base = |cmd: &mut assert_cmd::Command| {
        cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("PG_DB_PASSWORD", PASSWORD)
            .env("DATABASE_URL", url(pg, "app"))
            .args(["schedule", "--stage", "dev", "--schedule", "rate(1 day)"])
            .args(["--image", "backhaul:1", "--subnets", "subnet-1"])
            .args(["--security-groups", "sg-1"])
            .args(["--execution-role-arn", "arn:aws:iam::123456789012:role/e"])
            .args(["--events-role-arn", "arn:aws:iam::123456789012:role/v"])
            .args(["--task-role-arn", "arn:aws:iam::123456789012:role/t"])
            .args(["--env", "S3_BUCKET=acme"]);
    };
    let mut cmd = backhaul();
    base(&mut cmd);
    cmd.args([
        "--secret",
        &format!("POSTGRES_SECRET={SECRET_ARN}"),
        "--dry-run",
    ]);
    let out = seen.run("schedule --dry-run", &mut cmd);
    expect(&out, 0, "schedule --dry-run");

    let mut cmd = backhaul();
    base(&mut cmd);
    let plaintext = format!("DATABASE_URL=postgresql://u:{PASSWORD_ENC}@h/d");
    cmd.args(["--env", &plaintext, "--dry-run"]);
    let out = seen.run("schedule plaintext --env", &mut cmd);
    expect(&out, 2, "schedule plaintext --env");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--secret DATABASE_URL=<ARN>"),
        "refused with advice"
    );
}

/// Every object in the buckets whose name marks it as a manifest.
fn manifests(buckets: &[String], seen: &mut Captured) {
    let mut n = 0;
    for b in buckets {
        for key in moto()
            .keys(b)
            .iter()
            .filter(|k| k.ends_with(".manifest.json"))
        {
            seen.add(
                format!("s3://{b}/{key}"),
                String::from_utf8_lossy(&moto().get(b, key)),
            );
            n += 1;
        }
    }
    assert_eq!(n, 3, "one manifest per successful backup");
}

#[test]
fn the_password_appears_nowhere() {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("app");
    pg.psql("app", FIXTURE_SQL);
    let buckets = ["env", "url", "secret"].map(|h| moto().bucket(&format!("hyg-{h}")));
    let argv_log = pg.dir.path().join("argv.log");
    let mut seen = Captured::default();

    backups(&pg, &buckets, &argv_log, &mut seen);
    reads(&pg, &buckets[0], &mut seen);
    schedule(&pg, &mut seen);
    manifests(&buckets, &mut seen);
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(
        argv.lines().count() >= 3,
        "pg_dump ran through the logger: {argv}"
    );
    seen.add("pg_dump argv", argv);

    seen.assert_contains("backup PG_DB_* stderr", "DEBUG");
    seen.assert_contains("backup wrong db stdout", "no_such_db");
    seen.assert_contains("backup --dry-run stdout", "127.0.0.1");
    seen.assert_contains("restore into non-empty stderr", "not empty");
    seen.assert_contains("schedule --dry-run stdout", SECRET_ARN);
    let leaks = seen.leaks();
    assert!(
        leaks.is_empty(),
        "the password leaked:\n{}",
        leaks.join("\n")
    );
}
