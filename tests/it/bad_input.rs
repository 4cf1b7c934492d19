//! The bad-input matrix: every case exits 2 with exactly one line on stderr naming what to fix,
//! prints nothing on stdout, and makes no AWS call (AWS points at a closed port, so a call would
//! fail with exit 1 instead). The whole table is one reviewed snapshot.

use crate::common::*;

type Env = Vec<(&'static str, &'static str)>;
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const PG: &[(&str, &str)] = &[
    ("S3_BUCKET", "acme-backups"),
    ("STAGE", "prod"),
    ("PG_DB_HOST", "db"),
    ("PG_DB_USER", "app"),
    ("PG_DB_NAME", "app"),
];
/// Removes S3_BUCKET from the base, for cases that name the destination otherwise.
const NO_BUCKET: &[(&str, &str)] = &[("S3_BUCKET", "")];
const STORE: &[(&str, &str)] = &[("S3_BUCKET", "acme-backups"), ("STAGE", "prod")];
const SCHED: &[&str] = &[
    "schedule",
    "--stage",
    "prod",
    "--image",
    "acct.dkr.ecr.us-east-1.amazonaws.com/backhaul:1",
    "--subnets",
    "subnet-1",
    "--security-groups",
    "sg-1",
    "--execution-role-arn",
    "arn:aws:iam::123456789012:role/exec",
    "--events-role-arn",
    "arn:aws:iam::123456789012:role/events",
    "--task-role-arn",
    "arn:aws:iam::123456789012:role/task",
    "--env",
    "S3_BUCKET=acme-backups",
    "--secret",
    "POSTGRES_SECRET=arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf",
    "--dry-run",
];

/// `base` with `extra` on top; an empty value in `extra` removes the variable.
fn with(
    base: &'static [(&'static str, &'static str)],
    extra: &[(&'static str, &'static str)],
) -> Env {
    let mut v: Vec<_> = base
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .copied()
        .collect();
    v.extend(extra.iter().filter(|(_, v)| !v.is_empty()).copied());
    v.retain(|(_, v)| !v.is_empty());
    v
}

fn cases() -> Vec<(Vec<&'static str>, Env)> {
    let sched = |extra: &'static [&'static str]| -> Vec<&'static str> {
        SCHED.iter().chain(extra).copied().collect()
    };
    let fixed: Vec<Case> = vec![
        (&["backup"], &[("S3_BUCKET", "")]),
        (&["backup"], &[("STAGE", "")]),
        (&["backup"], &[("STAGE", "Prod")]),
        (&["backup"], &[("STAGE", "dev_1")]),
        (&["backup"], &[("S3_BUCKET", "My_Bucket")]),
        (&["backup"], &[("S3_BUCKET", "ab")]),
        (
            &["backup"],
            &[("PG_DB_HOST", ""), ("PG_DB_USER", ""), ("PG_DB_NAME", "")],
        ),
        (&["backup"], &[("PG_DB_USER", "")]),
        (&["backup"], &[("PG_DB_NAME", " , ")]),
        (&["backup"], &[("PG_DB_PORT", "54x")]),
        (&["backup"], &[("PG_DB_PORT", "70000")]),
        (&["backup"], &[("PG_DB_HOST", "postgres://db")]),
        (
            &["backup"],
            &[
                ("PG_DB_HOST", ""),
                ("POSTGRES_SECRET", "{\"username\":\"app\","),
            ],
        ),
        (
            &["backup"],
            &[
                ("PG_DB_HOST", ""),
                (
                    "POSTGRES_SECRET",
                    "{\"username\":\"app\",\"host\":\"db\",\"port\":\"x\"}",
                ),
            ],
        ),
        (&["backup"], &[("DATABASE_URL", "mysql://app:pw@db/app")]),
        (&["backup"], &[("DATABASE_URL", "postgresql://:5432/app")]),
        (&["backup"], &[("NEON_DB_ENDPOINT_OPTION", "endpoint=")]),
        (&["backup"], &[("NEON_DB_ENDPOINT_OPTION", "ep x")]),
        (&["backup"], &[("BACKUP_TIMEZONE", "Mars/Olympus")]),
        (&["backup"], &[("BACKUP_TIMEZONE", "+25:00")]),
        (&["backup"], &[("PG_COMPRESSION", "lz4")]),
        (&["backup", "--compression", "gzip"], &[]),
        (&["backup"], &[("PG_ZSTD_LEVEL", "25")]),
        (&["backup"], &[("PG_ZSTD_LEVEL", "0")]),
        (&["backup", "--zstd-level", "-8"], &[]),
        (&["backup"], &[("BACKUP_TIMEOUT", "soon")]),
        (&["backup"], &[("BACKUP_PARALLEL", "0")]),
        (&["backup"], &[("BACKHAUL_PART_SIZE_MIB", "4")]),
        (&["backup"], &[("BACKHAUL_UPLOAD_CONCURRENCY", "0")]),
        (&["backup"], &[("BACKUP_PREFIX", "a/../b")]),
        (&["backup", "--dest", "ftp://host/dir"], NO_BUCKET),
        (&["backup", "--dest", "file://relative/dir"], NO_BUCKET),
        (&["backup", "--sse", "rot13"], &[]),
        (&["backup", "--sse-kms-key-id", "key-1"], &[]),
        (&["backup"], &[("BACKHAUL_NOTIFY_URL", "hc-ping.com/abc")]),
        (
            &["backup"],
            &[
                ("MONGO_CONNECTION_STRING", "http://mongo/db"),
                ("MONGO_DB_NAME", "shop"),
            ],
        ),
        (
            &["backup"],
            &[
                ("MONGO_CONNECTION_STRING", "mongodb://mongo:27017/"),
                ("MONGO_SCOPE", "databases"),
            ],
        ),
        (
            &["backup"],
            &[
                ("MONGO_CONNECTION_STRING", "mongodb://mongo:27017/"),
                ("MONGO_SCOPE", "all"),
            ],
        ),
        (
            &["backup", "--mongodump-arg=--oplog"],
            &[
                ("MONGO_CONNECTION_STRING", "mongodb://mongo:27017/"),
                ("MONGO_DB_NAME", "shop"),
            ],
        ),
        (
            &["backup", "--mongodump-arg=--gzip"],
            &[("MONGO_CONNECTION_STRING", "mongodb://mongo:27017/")],
        ),
        (
            &["backup"],
            &[
                ("MONGO_CONNECTION_STRING", "mongodb://mongo/shop"),
                ("MONGO_FORMAT", "tar"),
            ],
        ),
        (&["backup", "--only", "mongo"], &[]),
        (&["backup", "--only", "oracle"], &[]),
        (&["backup", "--no-such-flag"], &[]),
        (&["bakup"], &[]),
        (&["prune"], &[]),
        (&["prune", "--keep-daily", "-1"], &[]),
        (&["restore", "latest", "--to", "mysql://u:pw@h/d"], &[]),
        (
            &[
                "restore",
                "latest",
                "--to",
                "postgresql://u:pw@h/d",
                "--jobs",
                "0",
            ],
            &[],
        ),
        (&["restore", "latest"], &[]),
        (&["verify", "--since", "a week"], &[]),
        (
            &[
                "verify",
                "latest",
                "--restore-into",
                "mysql://u:hunter22@h/d",
            ],
            &[],
        ),
        (&["restore", "latest", "--to", "db.example.com/app"], &[]),
        // A file:// destination that does not exist is a typo, not "no backups".
        (&["list", "--dest", "file:///no/such/dir"], NO_BUCKET),
        (
            &["verify", "latest", "--dest", "file:///no/such/dir"],
            NO_BUCKET,
        ),
        (
            &["prune", "--keep-last", "3", "--dest", "file:///no/such/dir"],
            NO_BUCKET,
        ),
        (
            &[
                "restore",
                "latest",
                "--to",
                "postgresql://u@h/d",
                "--dest",
                "file:///no/such/dir",
            ],
            NO_BUCKET,
        ),
        // Issue 28: each refused before anything runs (and none panics).
        (
            &["backup"],
            &[("PG_DB_HOST", "127.0.0.1:56433"), ("PG_DB_PORT", "5432")],
        ),
        (&["backup"], &[("PG_DB_HOST", "db:x")]),
        (&["backup"], &[("PG_DB_HOST", "[::1")]),
        (
            &["backup"],
            &[
                ("PG_DB_HOST", ""),
                (
                    "POSTGRES_SECRET",
                    "{\"username\":\"app\",\"host\":\"db.example.com:5432\",\"port\":6543}",
                ),
            ],
        ),
        (&["backup"], &[("AWS_MAX_ATTEMPTS", "0")]),
        (&["backup"], &[("AWS_MAX_ATTEMPTS", "abc")]),
        (&["list"], &[("AWS_MAX_ATTEMPTS", "0")]),
        (&["backup"], &[("AWS_RETRY_MODE", "sometimes")]),
        (&["backup"], &[("AWS_ENDPOINT_URL", "http//localhost:9000")]),
        (&["list"], &[("AWS_ENDPOINT_URL", "localhost:9000")]),
        (
            &["backup"],
            &[
                ("S3_BUCKET", ""),
                ("BACKUP_DEST", "file:///nonexistent/dir"),
            ],
        ),
        (
            &[
                "restore",
                "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_app_2024-01-01_00h00m00s.dump.zst",
                "--to",
                "postgresql://u@h/d",
                "--dest",
                "file:///no/such/dir",
            ],
            &[("S3_BUCKET", ""), ("STAGE", "")],
        ),
        (&["backup"], &[("STAGE", "prod-")]),
        (&["list"], &[("STAGE", "prod-")]),
        (&["backup"], &[("STAGE", "pr\nod")]),
        (&["backup"], &[("BACKUP_DEST", "s3://other-bucket")]),
        (&["list", "--dest", "s3://other-bucket"], &[]),
        (&["backup"], &[("S3_FORCE_PATH_STYLE", "maybe")]),
        (&["backup"], &[("BACKUP_PRUNE", "on")]),
        (&["backup"], &[("BACKHAUL_LOG", "backhaul=loud")]),
        (&["list"], &[("BACKHAUL_LOG", "[")]),
        (&["backup", "--buckt", "x"], &[]),
        (&["list", "--databse", "app"], &[]),
        (&["backup"], &[("BACKUP_PARALLEL", "two")]),
        (&["backup", "--parallel", "two"], &[]),
        (
            &[
                "restore",
                "latest",
                "--to",
                "postgresql://u@h/d",
                "--lock-timeout",
                "soon",
            ],
            &[],
        ),
        (
            &[
                "unschedule",
                "--stage",
                "a-stage-name-longer-than-fifty-five-characters-is-refused",
            ],
            &[],
        ),
    ];
    let mut out: Vec<_> = fixed
        .into_iter()
        .map(|(args, env)| {
            let base = if args[0] == "backup" { PG } else { STORE };
            (args.to_vec(), with(base, env))
        })
        .collect();
    for extra in [
        &["--schedule", "rate(5 minute)"][..],
        &["--schedule", "rate(0 minutes)"],
        &["--schedule", "cron(0 3 * * *)"],
        &["--schedule", "cron(99 3 * * ? *)"],
        &["--schedule", "cron(0 3 1 * MON *)"],
        &["--cpu", "1024", "--memory", "512"],
        &["--cpu", "300"],
        &["--env", "DB_PASSWORD=hunter22"],
        &["--env", "DATABASE_URL=postgresql://u:hunter22@db/app"],
        &["--env", "NOEQUALS"],
        &["--secret", "POSTGRES_SECRET=hunter22!"],
        &["--secret", "PG_DB_PASSWORD=arn:aws:secretsmanager:us-east-1:123456789012:secret:pg-hunter22:password"],
        &["--ephemeral-storage-gib", "500"],
        &["--env", "S3_BUCKET="],
        &["--command", "backup --prune"],
    ] {
        let leaked: &'static [&'static str] = Box::leak(extra.to_vec().into_boxed_slice());
        out.push((sched(leaked), vec![("AWS_REGION", "us-east-1")]));
    }
    out
}

/// Runs one case against `endpoint`: its one stderr line and exit code, after asserting the
/// matrix's promises (exit 2, one `error:` line, nothing on stdout, no secret echoed).
fn run(args: &[&str], env: &Env, endpoint: &str) -> (String, Option<i32>) {
    let mut cmd = backhaul();
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .envs(env.iter().copied())
        .args(args);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert_eq!(lines.len(), 1, "{args:?} {env:?}: one line, got {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    assert!(
        !stderr.contains("hunter22"),
        "{args:?}: secret echoed: {stderr}"
    );
    (lines[0].to_string(), out.status.code())
}

/// The case's variables, as a shell would show them.
fn shown(env: &Env) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={}", v.escape_debug()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_bad_input_exits_2_with_one_line() {
    let cases = cases();
    assert!(cases.len() >= 30, "the matrix covers at least 30 cases");
    let mut report = String::new();
    for (args, env) in &cases {
        let (line, code) = run(args, env, "http://127.0.0.1:9");
        report.push_str(&format!(
            "$ {} backhaul {}\n",
            shown(env),
            args.iter()
                .map(|a| a.escape_debug().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        report.push_str(&format!("  exit {code:?}: {line}\n"));
    }
    // Cases only a server can tell: answered by moto, still before any dump.
    let nolock = "bh-matrix-nolock";
    let _ = block_on(moto().s3().create_bucket().bucket(nolock).send());
    for (args, extra) in [
        (&["backup", "--bucket", "no-such-bucket"][..], &[][..]),
        (
            &["backup"],
            &[("S3_BUCKET", nolock), ("BACKUP_LOCK_DAYS", "2")],
        ),
    ] {
        let mut env = with(PG, extra);
        env.push(("S3_FORCE_PATH_STYLE", "true"));
        let (line, code) = run(args, &env, &moto().endpoint);
        report.push_str(&format!(
            "$ [moto] {} backhaul {}\n  exit {code:?}: {line}\n",
            shown(&env),
            args.join(" ")
        ));
    }
    insta::assert_snapshot!("bad_input_matrix", report);
}
