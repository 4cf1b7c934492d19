//! `status --check`: exit 0 when every database has a good backup young enough, 1 naming each
//! that does not (backdated by renaming real backups; failed by a real `verify` of a damaged
//! object), 2 when it cannot know how old is too old.

use std::path::Path;

use crate::common::{backhaul, backhaul_moto, pg_env, summaries, Fixture};

/// `backhaul` on the file:// store at `dir`, stage prod.
fn on(dir: &Path) -> assert_cmd::Command {
    let mut cmd = backhaul();
    cmd.env("STAGE", "prod")
        .env("BACKUP_DEST", format!("file://{}", dir.display()));
    cmd
}

fn check(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = on(dir)
        .args(["status", "--check"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// Moves the backup at `key` (and its manifest) to the same database `days` days earlier.
fn backdate(dir: &Path, key: &str, days: i64) -> String {
    let (stage, rest) = key.split_once('/').unwrap();
    let ts = &rest[..20];
    let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d_%Hh%Mm%Ss").unwrap()
        - chrono::Duration::days(days);
    let old = t.format("%Y-%m-%d_%Hh%Mm%Ss").to_string();
    let new_key = format!("{stage}/{}", rest.replace(ts, &old));
    std::fs::create_dir_all(dir.join(&new_key).parent().unwrap()).unwrap();
    std::fs::rename(dir.join(key), dir.join(&new_key)).unwrap();
    // The manifest moves with it, its times shifted the same (status --check reads the age
    // from `finished_at`).
    let manifest = dir.join(format!("{key}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    for field in ["started_at", "finished_at"] {
        let t = chrono::DateTime::parse_from_rfc3339(m[field].as_str().unwrap()).unwrap()
            - chrono::Duration::days(days);
        m[field] = serde_json::Value::String(t.to_rfc3339());
    }
    m["key"] = serde_json::Value::String(new_key.clone());
    m["timestamp"] = serde_json::Value::String(old.clone());
    std::fs::write(
        dir.join(format!("{new_key}.manifest.json")),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(manifest).unwrap();
    new_key
}

#[test]
fn fresh_overdue_and_failed_backups() {
    let fx = Fixture::builder("check")
        .databases(&[("app", ""), ("audit", "")])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = on(dir.path());
    cmd.arg("backup");
    pg_env(&mut cmd, &fx.pg, "app", &fx.password, "app,audit");
    let out = cmd.assert().success();
    let keys: Vec<String> = summaries(&out.get_output().stdout)
        .iter()
        .map(|l| l["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");

    // Fresh: exit 0, one ok line per database.
    let (code, text) = check(dir.path(), &["--max-age", "1h"]);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("ok prod postgres app: last good backup "),
        "{text}"
    );
    assert!(
        lines[1].starts_with("ok prod postgres audit: last good backup "),
        "{text}"
    );
    assert!(lines[0].ends_with("allowed 1h (--max-age 1h)"), "{text}");

    // audit's only backup is now three days old: overdue, named with its age.
    backdate(dir.path(), &keys[1], 3);
    let (code, text) = check(dir.path(), &["--max-age", "1day"]);
    assert_eq!(code, 1, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ok prod postgres app: "), "{text}");
    assert!(
        lines[1].starts_with("FAIL prod postgres audit: overdue: last good backup ")
            && lines[1].contains(" (3days ")
            && lines[1].ends_with("allowed 1day (--max-age 1day)"),
        "{text}"
    );
    // A long enough allowance takes it back.
    assert_eq!(check(dir.path(), &["--max-age", "4d"]).0, 0);

    // app's newest backup is damaged and a real verify records the failure: failing, although
    // it is fresh.
    let object = dir.path().join(&keys[0]);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    on(dir.path())
        .args(["verify", "latest", "--database", "app"])
        .assert()
        .code(1);
    let (code, text) = check(dir.path(), &["--max-age", "4d"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines().next().unwrap().starts_with(&format!(
            "FAIL prod postgres app: newest backup {} failed verification; no good backup, allowed 4days",
            keys[0]
        )),
        "{text}"
    );
}

#[test]
fn an_empty_stage_fails_and_no_allowance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = check(dir.path(), &["--max-age", "26h"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        text,
        "FAIL prod: no backups at all, allowed 1day 2h (--max-age 1day 2h)\n"
    );

    // Not scheduled and no --max-age: nothing says how old is too old.
    let out = backhaul_moto()
        .env("STAGE", format!("unscheduled-{}", std::process::id()))
        .env("BACKUP_DEST", format!("file://{}", dir.path().display()))
        .args(["status", "--check"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: --check needs a schedule") && err.contains("--max-age"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // A bad duration is a configuration error too.
    let out = on(dir.path())
        .args(["status", "--check", "--max-age", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A scheduled stage checked with nothing but its name: the backups are read where its task
/// writes them (bucket, prefix and zone from the task definition), not at the bucket's root.
/// Reading the task's bucket without its `BACKUP_PREFIX` found nothing and called a healthy
/// stage overdue.
#[test]
fn a_scheduled_stage_is_checked_where_its_task_writes() {
    use crate::common::contract::Contract;
    use crate::ecs::{create_cluster, py, schedule, stage};

    let stage = stage("chkpfx");
    create_cluster(&format!("backhaul-{stage}"));
    py("client('s3').create_bucket(Bucket='acme')");
    let rec = Contract::start();
    let out = schedule(&rec, &stage)
        .args([
            "--env",
            "BACKUP_PREFIX=teams/shop",
            "--timezone",
            "Asia/Tokyo",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let fx = Fixture::builder("chkpfx").databases(&[("app", "")]).start();
    let mut cmd = backhaul_moto();
    cmd.env("STAGE", &stage)
        .env("S3_BUCKET", "acme")
        .env("BACKUP_PREFIX", "teams/shop")
        .env("BACKUP_TIMEZONE", "Asia/Tokyo")
        .arg("backup");
    pg_env(&mut cmd, &fx.pg, "app", &fx.password, "app");
    let key = summaries(&cmd.assert().success().get_output().stdout)[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with(&format!("teams/shop/{stage}/")), "{key}");

    let status = |args: &[&str]| {
        let out = backhaul_moto()
            .env("STAGE", &stage)
            .env_remove("S3_BUCKET")
            .env_remove("BACKUP_PREFIX")
            .env_remove("BACKUP_TIMEZONE")
            .arg("status")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, text, err) = status(&["--check"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.starts_with(&format!("ok {stage} postgres app: last good backup ")),
        "{text}"
    );
    let (code, text, err) = status(&["--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(st["bucket"], "acme", "{st}");
    assert_eq!(st["recent_backups"][0], key.as_str(), "{st}");
}
