//! Bad configuration exits 2 with one line naming what to fix, before any connection or
//! upload (AWS points at a closed port: any call would fail differently), and `--dry-run`
//! shows the resolved plan, Neon options included.

use crate::common::*;

fn offline() -> assert_cmd::Command {
    let mut cmd = backhaul();
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    cmd
}

/// (environment, expected error line)
const CASES: &[(&[(&str, &str)], &str)] = &[
    (&[("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d")], "error: S3_BUCKET (or --bucket) is not set: name the backup bucket (or pass --dest s3://bucket or file:///dir)"),
    (&[("S3_BUCKET", "bkt"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d")], "error: STAGE is not set: name the stage (e.g. STAGE=prod or --stage prod)"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "Prod"), ("PG_DB_HOST", "h")], "error: STAGE \"Prod\" must be lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. dev, uat or prod"),
    (&[("S3_BUCKET", "My_Bucket"), ("STAGE", "prod"), ("PG_DB_HOST", "h")], "error: S3_BUCKET \"My_Bucket\" is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod")], "error: PG_DB_HOST (or --pg-host) is not set: nothing to back up: configure PostgreSQL (PG_DB_HOST, DATABASE_URL or POSTGRES_SECRET) and/or MongoDB (MONGO_CONNECTION_STRING)"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_NAME", "d")], "error: PG_DB_USER (or --pg-user) is not set: set PG_DB_USER or POSTGRES_SECRET"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u")], "error: PG_DB_NAME (or --pg-db) is not set: name the database(s) to back up (comma separated), or put one in the URL path"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d"), ("PG_DB_PORT", "54x")], "error: PG_DB_PORT \"54x\" is not a TCP port (1-65535)"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("POSTGRES_SECRET", "{\"username\": \"u\", \"password\": \"hunter22\""), ("PG_DB_NAME", "d")], "error: POSTGRES_SECRET is not valid JSON of the Secrets Manager form {\"username\",\"password\",\"host\",\"port\",\"dbname\"}: EOF while parsing an object at line 1 column 40"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d"), ("NEON_DB_ENDPOINT_OPTION", "endpoint=EP Bad")], "error: NEON_DB_ENDPOINT_OPTION \"endpoint=EP Bad\" is not a Neon endpoint id; use endpoint%3Dep-name-123456, endpoint=ep-name-123456 or ep-name-123456"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d"), ("BACKUP_TIMEZONE", "Mars/Base")], "error: BACKUP_TIMEZONE \"Mars/Base\" is not an IANA time zone (e.g. Asia/Singapore) or a fixed offset (e.g. +08:00)"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d"), ("PG_COMPRESSION", "lz4")], "error: PG_COMPRESSION \"lz4\" is not one of zstd (default, .dump.zst), pg (pg_dump's own compression, .dump) or none"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("DATABASE_URL", "mysql://u:hunter22@h/d")], "error: DATABASE_URL has scheme \"mysql\"; expected postgresql://user:password@host:5432/dbname"),
    (&[("S3_BUCKET", "bkt"), ("STAGE", "prod"), ("PG_DB_HOST", "h"), ("PG_DB_USER", "u"), ("PG_DB_NAME", "d"), ("BACKUP_TIMEOUT", "soon")], "error: BACKUP_TIMEOUT \"soon\" is not a duration like 90s, 45m, 2h or 7d"),
];

#[test]
fn bad_configuration_exits_2_with_one_line() {
    for (env, expected) in CASES {
        let mut cmd = offline();
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.arg("backup").assert().code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, vec![*expected], "for {env:?}");
        assert!(out.get_output().stdout.is_empty());
        assert!(!stderr.contains("hunter22"));
    }
}

#[test]
fn dry_run_shows_neon_plan_without_connecting() {
    let out = offline()
        .env("S3_BUCKET", "acme-backups")
        .env("STAGE", "prod")
        .env(
            "PG_DB_HOST",
            "ep-aged-morning-26453078-pooler.us-east-2.aws.neon.tech",
        )
        .env("PG_DB_USER", "neondb_owner")
        .env("PG_DB_PASSWORD", "hunter22")
        .env("PG_DB_NAME", "app,audit")
        .env(
            "NEON_DB_ENDPOINT_OPTION",
            "endpoint%3Dep-aged-morning-26453078",
        )
        .args(["backup", "--dry-run"])
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(!stdout.contains("hunter22"));
    let mut plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The timestamp varies; everything else is fixed.
    let ts = plan["timestamp"].as_str().unwrap().to_string();
    plan["timestamp"] = "<ts>".into();
    let text = serde_json::to_string_pretty(&plan)
        .unwrap()
        .replace(&ts, "<ts>");
    insta::assert_snapshot!("dry_run_neon_plan", text);
}

#[test]
fn neon_endpoint_is_derived_from_the_host() {
    let out = offline()
        .env("PG_DB_PASSWORD", "hunter22")
        .args(["backup", "--dry-run", "--bucket", "acme-backups", "--stage", "dev", "--pg-url"])
        .arg("postgresql://neondb_owner:hunter22@ep-cool-darkness-123456.eu-central-1.aws.neon.tech/neondb")
        .assert()
        .success();
    let plan: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        plan["targets"][0]["connection"],
        "postgresql://neondb_owner@ep-cool-darkness-123456.eu-central-1.aws.neon.tech:5432/neondb?options=endpoint%3Dep-cool-darkness-123456&sslmode=require"
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    offline()
        .args(["backup", "--no-such-flag"])
        .assert()
        .code(2);
}
