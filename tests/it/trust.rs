//! Trust at the edges (issue 26): where state is missing or shared, nothing unverified is
//! trusted and nothing reported ok is lost. Each test reproduces one way it used to go wrong.

use std::time::Duration;

use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

/// The database artifact (not the globals) a backup reported ok.
fn db_key(out: &assert_cmd::assert::Assert, db: &str) -> String {
    let lines = summaries(&out.get_output().stdout);
    let line = lines
        .iter()
        .find(|l| {
            l["event"] == "artifact"
                && l["key"]
                    .as_str()
                    .is_some_and(|k| k.contains(&format!("/backup_prod_{db}_")))
        })
        .unwrap_or_else(|| panic!("no artifact line for {db}: {lines:?}"));
    assert_eq!(line["status"], "ok", "{line}");
    line["key"].as_str().unwrap().to_string()
}

fn backup(fx: &Fixture, dbs: &str, db: &str) -> String {
    backup_with(fx, dbs, db, "off")
}

fn backup_with(fx: &Fixture, dbs: &str, db: &str, globals: &str) -> String {
    let out = fx
        .backup(dbs)
        .env("PG_COMPRESSION", "none")
        .env("BACKUP_GLOBALS", globals)
        .assert()
        .success();
    // Keys have one-second resolution: the next run must get a later one.
    std::thread::sleep(Duration::from_millis(1100));
    db_key(&out, db)
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

fn delete(bucket: &str, key: &str) {
    block_on(moto().s3().delete_object().bucket(bucket).key(key).send()).unwrap();
}

/// Replaces `key`'s bytes, keeping the metadata that says backhaul wrote it.
fn put_as_backhaul(bucket: &str, key: &str, body: Vec<u8>) {
    block_on(
        moto()
            .s3()
            .put_object()
            .bucket(bucket)
            .key(key)
            .metadata("backhaul-run", "someone")
            .body(body.into())
            .send(),
    )
    .unwrap();
}

fn user_tables(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "select count(*) from pg_tables where schemaname not in ('pg_catalog','information_schema')",
    )
}

/// Why: a `--compression none` backup, manifest deleted and a byte changed, restored with
/// exit 0 and a corrupted row; prune then counted it as the newest good backup and deleted
/// every checksummed one. Now: refused without `--allow-unverified` (exit 1, naming the key,
/// what is missing and the flag); prune keeps the newest checksummed backup; the old
/// script's objects (no backhaul metadata) still restore, with the warning.
#[test]
fn missing_manifest_switches_nothing_off() {
    let fx = Fixture::start("trust-missing");
    let b = &fx.bucket;
    let oldest = backup(&fx, "app", "app");
    let older = backup(&fx, "app", "app");
    let key = backup(&fx, "app", "app");
    delete(b, &format!("{key}.manifest.json"));
    let mut object = moto().get(b, &key);
    let at = object.windows(4).position(|w| w == b"rush").unwrap();
    object[at..at + 4].copy_from_slice(b"RUSH");
    put_as_backhaul(b, &key, object);

    fx.pg.create_db("target");
    for which in [key.as_str(), "latest"] {
        let out = fx
            .cmd()
            .args(["restore", which, "--to", &fx.url("target")])
            .assert()
            .code(1);
        let err = stderr(&out);
        assert!(err.contains(&key), "{err}");
        assert!(err.contains("its manifest is missing"), "{err}");
        assert!(err.contains("--allow-unverified"), "{err}");
        assert_eq!(user_tables(&fx.pg, "target"), "0", "target untouched");
    }

    // Prune: the manifest-less object (past the grace period) takes the --keep-last slot,
    // but the newest checksummed backup is still kept; only the oldest goes.
    std::thread::sleep(Duration::from_millis(1500));
    let out = fx
        .cmd()
        .args(["prune", "--keep-last", "1", "--grace", "1s"])
        .assert()
        .success();
    let plan = stdout(&out);
    assert!(plan.contains(&format!("keep {key} (last)")), "{plan}");
    assert!(
        plan.contains(&format!("keep {older} (newest successful)")),
        "{plan}"
    );
    assert!(plan.contains(&format!("delete {oldest} ")), "{plan}");
    let keys = moto().keys(b);
    assert!(keys.contains(&key) && keys.contains(&format!("{older}.manifest.json")));

    // The operator's explicit choice: restored unchecked, corrupted row and all.
    let out = fx
        .cmd()
        .args([
            "restore",
            &key,
            "--to",
            &fx.url("target"),
            "--allow-unverified",
        ])
        .assert()
        .success();
    assert_eq!(
        summaries(&out.get_output().stdout)[0]["checksum_verified"],
        false
    );
    assert_eq!(
        fx.pg
            .psql("target", "select count(*) from orders where note = 'RUSH'"),
        "1"
    );

    // An unreadable manifest is no manifest either.
    moto().put(
        b,
        &format!("{older}.manifest.json"),
        b"{not json,,".to_vec(),
    );
    fx.pg.create_db("target2");
    let out = fx
        .cmd()
        .args(["restore", &older, "--to", &fx.url("target2")])
        .assert()
        .code(1);
    let err = stderr(&out);
    assert!(
        err.contains(&older) && err.contains("manifest unreadable"),
        "{err}"
    );
    assert!(err.contains("--allow-unverified"), "{err}");

    // The old script's dump: no manifest, no backhaul metadata: restored as before.
    let legacy = "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_app_2024-01-01_00h00m00s.dump";
    moto().put(b, legacy, moto().get(b, &older));
    fx.pg.create_db("from_legacy");
    let out = fx
        .cmd()
        .args(["restore", legacy, "--to", &fx.url("from_legacy")])
        .assert()
        .success();
    assert!(stderr(&out).contains("no manifest"), "{}", stderr(&out));
    assert_eq!(fx.pg.fingerprint("from_legacy"), fx.pg.fingerprint("app"));
}

/// Why: one manifest replaced by `{not json,,` made `list`, `verify --since` and `prune`
/// exit 1 with no other output, for every database of the stage. Now it is one row with its
/// key and reason; the rest carries on; verify counts it; prune keeps that database whole.
#[test]
fn one_unreadable_manifest_is_one_row() {
    let fx = Fixture::builder("trust-bad")
        .databases(&[("app", FIXTURE_SQL), ("other", "create table t(i int)")])
        .start();
    let b = &fx.bucket;
    let first = fx
        .backup("app,other")
        .env("PG_COMPRESSION", "none")
        .assert()
        .success();
    let (app1, other1) = (db_key(&first, "app"), db_key(&first, "other"));
    std::thread::sleep(Duration::from_millis(1100));
    let second = fx
        .backup("app,other")
        .env("PG_COMPRESSION", "none")
        .assert()
        .success();
    let (app2, other2) = (db_key(&second, "app"), db_key(&second, "other"));
    moto().put(b, &format!("{app1}.manifest.json"), b"{not json,,".to_vec());

    let out = fx.cmd().args(["list", "--json"]).assert().success();
    let rows = summaries(&out.get_output().stdout);
    let bad = rows.iter().find(|r| r["key"] == app1.as_str()).unwrap();
    assert_eq!(bad["verified"], "manifest unreadable", "{bad}");
    assert!(
        bad["problem"].as_str().unwrap().contains("not valid JSON"),
        "{bad}"
    );
    for k in [&app2, &other1, &other2] {
        let r = rows.iter().find(|r| r["key"] == k.as_str()).unwrap();
        assert!(r.get("problem").is_none(), "{r}");
    }
    let out = fx.cmd().arg("list").assert().success();
    assert!(stdout(&out).contains("manifest unreadable: not valid JSON"));

    let out = fx
        .cmd()
        .args(["verify", "--since", "1d", "--kind", "postgres"])
        .assert()
        .code(1);
    let lines = summaries(&out.get_output().stdout);
    let failed: Vec<&str> = lines
        .iter()
        .filter(|l| l["status"] == "failed")
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec![app1.as_str()], "{lines:?}");
    assert!(lines.iter().filter(|l| l["status"] == "ok").count() >= 3);
    assert!(stderr(&out).contains("1 of"), "{}", stderr(&out));

    let out = fx
        .cmd()
        .args(["status", "--stage", "prod", "--bucket", b, "--json"])
        .assert()
        .success();
    let st: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(
        st["problems"][&app1]
            .as_str()
            .unwrap()
            .contains("manifest unreadable"),
        "{st}"
    );

    let out = fx
        .cmd()
        .args(["prune", "--keep-last", "1"])
        .assert()
        .success();
    let plan = stdout(&out);
    assert!(
        plan.contains(&format!("keep {app1} (manifest unreadable")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("keep {app2} (app has an unreadable manifest")),
        "{plan}"
    );
    assert!(plan.contains(&format!("delete {other1} ")), "{plan}");
    let keys = moto().keys(b);
    assert!(keys.contains(&app1) && keys.contains(&app2) && !keys.contains(&other1));
}

/// Why: a manifest whose object is gone appeared nowhere ("no backups to verify"), and the
/// globals of a run whose database backup failed were kept forever. Now the lost backup is a
/// row "object missing" in list and status, a failure in verify, and prune removes the
/// orphan manifest and the orphaned globals once older than the newest good backup.
#[test]
fn lost_backups_are_shown_and_cleaned() {
    let fx = Fixture::start("trust-lost");
    let b = &fx.bucket;
    let lost = backup_with(&fx, "app", "app", "auto");
    // A run whose database backup is gone entirely: only its globals remain.
    let globals_only = backup_with(&fx, "app", "app", "auto");
    delete(b, &globals_only);
    delete(b, &format!("{globals_only}.manifest.json"));
    let good = backup_with(&fx, "app", "app", "auto");
    delete(b, &lost);
    let all = moto().keys(b);
    let globals_of = |k: &str| {
        let (dir, _) = k.rsplit_once('/').unwrap();
        all.iter()
            .find(|g| g.starts_with(&format!("{dir}/globals_")) && !g.ends_with(".manifest.json"))
            .unwrap_or_else(|| panic!("no globals beside {k}: {all:?}"))
            .clone()
    };
    assert!(moto().keys(b).contains(&globals_of(&globals_only)));

    let out = fx.cmd().args(["list", "--json"]).assert().success();
    let rows = summaries(&out.get_output().stdout);
    let row = rows.iter().find(|r| r["key"] == lost.as_str()).unwrap();
    assert_eq!(row["verified"], "object missing", "{row}");

    let out = fx
        .cmd()
        .args(["status", "--stage", "prod", "--bucket", b])
        .assert()
        .success();
    assert!(
        stdout(&out).contains(&format!("{lost} (object missing)")),
        "{}",
        stdout(&out)
    );

    let out = fx
        .cmd()
        .args(["verify", "--since", "1d", "--database", "app"])
        .assert()
        .code(1);
    let lines = summaries(&out.get_output().stdout);
    let l = lines.iter().find(|l| l["key"] == lost.as_str()).unwrap();
    assert_eq!(
        (l["status"].as_str(), l["error"].as_str()),
        (Some("failed"), Some("object missing"))
    );

    std::thread::sleep(Duration::from_millis(1500));
    let out = fx
        .cmd()
        .args(["prune", "--keep-last", "1", "--grace", "1s"])
        .assert()
        .success();
    let plan = stdout(&out);
    assert!(
        plan.contains(&format!("delete {lost}.manifest.json (orphan manifest")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "delete {} (globals of a run without a database backup",
            globals_of(&globals_only)
        )),
        "{plan}"
    );
    let keys = moto().keys(b);
    assert!(!keys.contains(&format!("{lost}.manifest.json")), "{keys:?}");
    assert!(!keys.contains(&globals_of(&globals_only)), "{keys:?}");
    assert!(
        keys.contains(&good) && keys.contains(&globals_of(&good)),
        "{keys:?}"
    );
}

/// Why: run A's manifest PUT delayed 8 s (15 s here); run B (`backup --prune --keep-last 1`) deleted A's
/// object in that gap; A exited 0 with a manifest and no object. Now prune leaves manifest-less
/// objects younger than the grace period alone, and a backup whose object vanished anyway
/// fails loudly instead of reporting ok.
#[test]
fn concurrent_prune_never_takes_a_running_backup() {
    let fx = Fixture::start("trust-race");
    let b = fx.bucket.clone();
    // Every PutObject (the object, then its manifest) held back: a gap of seconds between.
    let delayed = |secs| {
        FaultProxy::start(
            &moto().endpoint,
            vec![Rule::new(
                "PUT",
                "x-id=PutObject",
                Fault::Delay {
                    first: 1000,
                    by: Duration::from_secs(secs),
                },
            )],
        )
    };
    // Long enough for B's whole backup and prune to fall inside A's gap, even on a busy host.
    let (long_gap, short_gap) = (delayed(15), delayed(4));
    let run_a = |fx: &Fixture, proxy: &FaultProxy| {
        let mut cmd = backhaul_std();
        cmd.arg("backup")
            .env("PG_DB_HOST", "127.0.0.1")
            .env("PG_DB_PORT", fx.pg.port.to_string())
            .env("PG_DB_USER", "app")
            .env("PG_DB_PASSWORD", &fx.password)
            .env("PG_DB_NAME", "app")
            .env("S3_BUCKET", &fx.bucket)
            .env("STAGE", "prod")
            .env("PG_COMPRESSION", "none")
            .env("AWS_ENDPOINT_URL", proxy.endpoint());
        cmd
    };
    let wait_for_object = |bucket: &str| -> String {
        for _ in 0..1200 {
            let keys = moto().keys(bucket);
            if let Some(k) = keys.iter().find(|k| {
                k.contains("/backup_prod_app_")
                    && !k.ends_with(".manifest.json")
                    && !keys.contains(&format!("{k}.manifest.json"))
            }) {
                return k.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("run A never wrote its object");
    };

    // 1. B runs `backup --prune --keep-last 1` while A's manifest is on its way.
    let a = run_a(&fx, &long_gap)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let a_key = wait_for_object(&b);
    std::thread::sleep(Duration::from_millis(1100));
    let out = fx
        .backup("app")
        .env("BACKUP_GLOBALS", "off")
        .args(["--prune", "--keep-last", "1"])
        .assert()
        .success();
    let b_key = db_key(&out, "app");
    assert!(
        stdout(&out).contains(&format!(
            "keep {a_key} (no manifest, younger than the grace period"
        )),
        "{}",
        stdout(&out)
    );
    let a_out = a.wait_with_output().unwrap();
    assert!(a_out.status.success(), "run A: {a_out:?}");
    let line = &summaries(&a_out.stdout)[0];
    assert_eq!(line["status"], "ok");
    let out = fx.cmd().args(["verify", &a_key]).assert().success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["status"], "ok");
    assert!(moto().keys(&b).contains(&b_key));

    // 2. The object deleted in that gap anyway (by hand, a lifecycle rule, a prune with a
    //    grace too short): the run says so (exit 1, failed) and leaves no manifest that
    //    vouches for nothing.
    let a = run_a(&fx, &short_gap)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let a2 = wait_for_object(&b);
    delete(&b, &a2);
    let a_out = a.wait_with_output().unwrap();
    assert_eq!(a_out.status.code(), Some(1), "{a_out:?}");
    let line = &summaries(&a_out.stdout)[0];
    assert_eq!(line["status"], "failed", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("was deleted after it was written"),
        "{line}"
    );
    let keys = moto().keys(&b);
    assert!(!keys.contains(&format!("{a2}.manifest.json")), "{keys:?}");
}

/// Why: `prune --abort-incomplete-older-than 24h` aborted a live upload whose `Initiated` the
/// server reported wrongly (moto says 2010). Now the key's own timestamp must be old too.
#[test]
fn incomplete_upload_age_needs_both_clocks() {
    let bucket = moto().bucket("trust-mpu");
    let now = chrono::Utc::now().format("%Y-%m-%d_%Hh%Mm%Ss").to_string();
    let live = format!("prod/{now}_PGSQL/backup_prod_app_{now}.dump");
    let old = "prod/2020-01-01_00h00m00s_PGSQL/backup_prod_app_2020-01-01_00h00m00s.dump";
    let s3 = moto().s3();
    for k in [live.as_str(), old] {
        block_on(s3.create_multipart_upload().bucket(&bucket).key(k).send()).unwrap();
    }
    let out = store_cmd(&bucket)
        .args(["prune", "--abort-incomplete-older-than", "24h"])
        .assert()
        .success();
    let text = stdout(&out);
    assert!(text.contains(&format!("abort {old} ")), "{text}");
    assert!(text.contains(&format!("skip {live} ")), "{text}");
    assert!(text.contains("its key says the run began at"), "{text}");
    assert_eq!(
        moto().multipart_uploads(&bucket),
        1,
        "the live upload stays"
    );
}
