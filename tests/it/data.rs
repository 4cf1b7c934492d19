//! Reading backups back: `restore`, `verify`, `list` and `prune` against a real PostgreSQL
//! cluster and moto, including objects the old shell script wrote (no manifest).

use std::sync::Arc;

use chrono::{Duration as Span, NaiveDate, NaiveDateTime};

use crate::common::*;

const PASSWORD: &str = APP_PASSWORD;
const PASSWORD_ENC: &str = "p%40ss%3Aw%2Frd%25%23%3F%26%3D";
const TS: &str = "%Y-%m-%d_%Hh%Mm%Ss";

/// The fixture's cluster (role `app`, database `app`), with its own first bucket.
fn cluster() -> Fixture {
    Fixture::start("data")
}

fn url(pg: &Pg, db: &str) -> String {
    app_url(pg, PASSWORD, db)
}

fn backup(pg: &Pg, bucket: &str, compression: &str, extra_env: &[(&str, String)]) -> String {
    let mut cmd = store_cmd(bucket);
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    cmd.env("PG_COMPRESSION", compression);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.assert().success();
    let lines = summaries(&out.get_output().stdout);
    lines.iter().find(|l| l["event"] == "artifact").unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn restore(bucket: &str, key: &str, to: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = store_cmd(bucket);
    cmd.args(["restore", key, "--to", to]).args(extra);
    let a = cmd.assert();
    let out = a.get_output();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(PASSWORD) && !all.contains(PASSWORD_ENC),
        "{all}"
    );
    a
}

fn user_tables(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "select count(*) from pg_tables where schemaname not in ('pg_catalog','information_schema')",
    )
}

/// Puts many objects concurrently (moto is slow one request at a time).
fn put_many(bucket: &str, objects: Vec<(String, Vec<u8>)>) {
    let s3 = moto().s3();
    block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for (k, b) in objects {
            let (s3, sem, bucket) = (s3.clone(), sem.clone(), bucket.to_string());
            set.spawn(async move {
                let _p = sem.acquire_owned().await.unwrap();
                s3.put_object()
                    .bucket(bucket)
                    .key(k)
                    .body(b.into())
                    .send()
                    .await
                    .unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
}

fn pg_key(db: &str, t: NaiveDateTime) -> String {
    let ts = t.format(TS);
    format!("prod/{ts}_PGSQL/backup_prod_{db}_{ts}.dump")
}

fn fake_manifest(key: &str, db: &str, t: NaiveDateTime) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": 1, "tool": "backhaul", "tool_version": "0", "kind": "postgres", "stage": "prod",
        "database": db, "key": key, "timestamp": t.format(TS).to_string(), "timezone": "UTC",
        "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T00:00:00Z",
        "compression": "none", "raw_bytes": 1, "stored_bytes": 1,
        "sha256": sha256_hex(b"x"), "parts": 1,
        "source": {"dump_tool": "pg_dump", "dump_tool_version": "17", "host": "h"}
    }))
    .unwrap()
}

#[test]
fn restore_round_trips_in_every_compression_mode() {
    let fx = cluster();
    let pg = &fx.pg;
    let source = pg.fingerprint("app");
    for (mode, extra) in [
        ("zstd", vec![]),
        ("pg", vec![]),
        ("none", vec!["--jobs", "2"]),
    ] {
        let bucket = moto().bucket(&format!("restore-{mode}"));
        let key = backup(pg, &bucket, mode, &[]);
        let db = format!("restored_{mode}");
        pg.create_db(&db);
        let out = restore(&bucket, &key, &url(pg, &db), &extra).success();
        let line = &summaries(&out.get_output().stdout)[0];
        assert_eq!(line["status"], "ok");
        assert_eq!(line["checksum_verified"], true);
        assert_eq!(pg.fingerprint(&db), source, "{mode}");
    }
}

#[test]
fn restore_latest_picks_the_newest_backup() {
    let fx = cluster();
    let pg = &fx.pg;
    let bucket = moto().bucket("latest");
    let first = backup(pg, &bucket, "zstd", &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.psql(
        "app",
        "create table added_later (x int); insert into added_later values (1)",
    );
    let second = backup(pg, &bucket, "zstd", &[]);
    assert_ne!(first, second);
    pg.create_db("latest");
    let out = restore(
        &bucket,
        "latest",
        &url(pg, "latest"),
        &["--database", "app"],
    )
    .success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["key"], second);
    assert_eq!(pg.fingerprint("latest"), pg.fingerprint("app"));
}

#[test]
fn legacy_dump_without_manifest_restores_and_lists() {
    let fx = cluster();
    let pg = &fx.pg;
    let bucket = moto().bucket("legacy");
    let out = std::process::Command::new(pg.bin.join("pg_dump"))
        .args(["-Fc", "-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string(), "app"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let legacy = "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_app_2024-01-01_00h00m00s.dump";
    moto().put(&bucket, legacy, out.stdout);
    let modern = backup(pg, &bucket, "zstd", &[]);

    pg.create_db("from_legacy");
    restore(&bucket, legacy, &url(pg, "from_legacy"), &[]).success();
    assert_eq!(pg.fingerprint("from_legacy"), pg.fingerprint("app"));

    let out = store_cmd(&bucket)
        .args(["list", "--json"])
        .assert()
        .success();
    let rows = summaries(&out.get_output().stdout);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["key"], modern, "newest first");
    assert_eq!(rows[0]["verified"], "no");
    assert_eq!(rows[0]["compression"], "zstd");
    assert_eq!(rows[1]["key"], legacy);
    assert_eq!(rows[1]["verified"], "no manifest");

    let out = store_cmd(&bucket).arg("list").assert().success();
    let table = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(table.starts_with("ID        TIMESTAMP"), "{table}");
    assert!(table.contains("no manifest"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn tampered_object_is_refused_and_nothing_is_committed() {
    let fx = cluster();
    let pg = &fx.pg;
    // "subtle": uncompressed COPY data edited in a way pg_restore accepts; only the withheld
    // tail keeps the single transaction from committing it.
    for mode in ["none", "zstd", "subtle"] {
        let bucket = moto().bucket(&format!("tamper-{mode}"));
        let compression = if mode == "subtle" { "none" } else { mode };
        let key = backup(pg, &bucket, compression, &[]);
        let mut object = moto().get(&bucket, &key);
        if mode == "subtle" {
            let at = object.windows(4).position(|w| w == b"rush").unwrap();
            object[at..at + 4].copy_from_slice(b"RUSH");
        } else {
            let at = object.len() / 2;
            for b in &mut object[at..at + 16] {
                *b ^= 0x5a;
            }
        }
        moto().put(&bucket, &key, object);

        let out = store_cmd(&bucket).args(["verify", &key]).assert().code(1);
        let line = &summaries(&out.get_output().stdout)[0];
        assert_eq!(line["status"], "failed");
        assert!(
            line["error"]
                .as_str()
                .unwrap()
                .contains("checksum mismatch"),
            "{line}"
        );
        assert_eq!(manifest(&bucket, &key)["verification"]["ok"], false);

        let db = format!("tampered_{mode}");
        pg.create_db(&db);
        let out = restore(&bucket, &key, &url(pg, &db), &[]).code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr);
        assert!(err.contains("checksum mismatch: expected"), "{err}");
        assert_eq!(user_tables(pg, &db), "0", "{mode}: nothing committed");
    }
}

#[test]
fn non_empty_target_needs_clean() {
    let fx = cluster();
    let pg = &fx.pg;
    let bucket = moto().bucket("clean");
    let key = backup(pg, &bucket, "zstd", &[]);
    pg.create_db("target");
    restore(&bucket, &key, &url(pg, "target"), &[]).success();
    pg.psql("target", "update people set name = 'changed'");
    let out = restore(&bucket, &key, &url(pg, "target"), &[]).code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(
        err.contains("--clean") && err.contains("not empty"),
        "{err}"
    );
    restore(&bucket, &key, &url(pg, "target"), &["--clean"]).success();
    assert_eq!(pg.fingerprint("target"), pg.fingerprint("app"));
}

#[test]
fn verify_records_the_outcome_and_reports_row_counts() {
    let fx = cluster();
    let pg = &fx.pg;
    let bucket = moto().bucket("verify");
    let key = backup(pg, &bucket, "zstd", &[]);
    let out = store_cmd(&bucket)
        .args(["verify", "latest", "--database", "app"])
        .assert()
        .success();
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "ok", "{line}");
    assert_eq!(line["details"]["checksum"], "ok");
    assert_eq!(line["details"]["structure"], "ok");
    let m = manifest(&bucket, &key);
    assert_eq!(m["verification"]["ok"], true, "{m}");

    pg.create_db("scratch");
    let out = store_cmd(&bucket)
        .args(["verify", "latest", "--restore-into", &url(pg, "scratch")])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(!stdout.contains(PASSWORD), "{stdout}");
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["details"]["tables"]["public.people"], 3000, "{line}");
    assert_eq!(line["details"]["tables"]["public.orders"], 8000, "{line}");
    assert_eq!(line["details"]["tables"]["public.empty_table"], 0, "{line}");

    let out = store_cmd(&bucket)
        .args(["list", "--json"])
        .assert()
        .success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["verified"], "yes");

    // The same check right after a backup, recorded in the new artifact's manifest.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let key2 = backup(
        pg,
        &bucket,
        "pg",
        &[("BACKUP_VERIFY_INTO", url(pg, "scratch"))],
    );
    let m = manifest(&bucket, &key2);
    assert_eq!(m["verification"]["ok"], true, "{m}");
    assert_eq!(
        m["verification"]["details"]["tables"]["public.people"],
        3000
    );
}

#[test]
fn list_follows_pagination_beyond_a_thousand_keys() {
    let bucket = moto().bucket("many");
    let start = NaiveDate::from_ymd_opt(2024, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let objects: Vec<(String, Vec<u8>)> = (0..1100)
        .map(|i| (pg_key("db", start + Span::minutes(i)), b"x".to_vec()))
        .collect();
    put_many(&bucket, objects);
    let out = store_cmd(&bucket)
        .args(["list", "--json", "--database", "db"])
        .assert()
        .success();
    let rows = summaries(&out.get_output().stdout);
    assert_eq!(rows.len(), 1100);
    assert_eq!(rows[0]["timestamp"], "2024-01-01_18h19m00s");
}

#[test]
fn prune_applies_gfs_over_a_year_of_backups() {
    let bucket = moto().bucket("prune");
    let start = NaiveDate::from_ymd_opt(2025, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let times: Vec<NaiveDateTime> = (0..365 * 4).map(|i| start + Span::hours(6 * i)).collect();
    let mut objects = Vec::new();
    for t in &times {
        let key = pg_key("app", *t);
        objects.push((
            format!("{key}.manifest.json"),
            fake_manifest(&key, "app", *t),
        ));
        objects.push((key, b"x".to_vec()));
    }
    put_many(&bucket, objects);

    store_cmd(&bucket)
        .arg("prune")
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "refusing to prune with no keep rule",
        ));

    let policy = [
        "prune",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "12",
    ];
    let out = store_cmd(&bucket)
        .args(policy)
        .arg("--dry-run")
        .assert()
        .success();
    let plan = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let kept: Vec<&str> = plan
        .lines()
        .filter_map(|l| l.strip_prefix("keep "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    // Newest is Wed 2025-12-31 18:00: 7 days (Dec 25-31), weeks ending Dec 21 and Dec 14
    // (the two newest weeks are already kept as days), and the last backup of the other 11
    // months.
    let at = |m: u32, d: u32| {
        pg_key(
            "app",
            NaiveDate::from_ymd_opt(2025, m, d)
                .unwrap()
                .and_hms_opt(18, 0, 0)
                .unwrap(),
        )
    };
    let mut expected: Vec<String> = (25..=31).map(|d| at(12, d)).collect();
    expected.extend([at(12, 21), at(12, 14)]);
    for (m, d) in [
        (1, 31),
        (2, 28),
        (3, 31),
        (4, 30),
        (5, 31),
        (6, 30),
        (7, 31),
        (8, 31),
        (9, 30),
        (10, 31),
        (11, 30),
    ] {
        expected.push(at(m, d));
    }
    expected.sort();
    let mut kept_sorted: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
    kept_sorted.sort();
    assert_eq!(kept_sorted, expected);
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("delete ")).count(),
        times.len() - 20
    );
    assert!(
        plan.contains(&format!(
            "keep {} (daily, weekly, monthly, newest successful)",
            at(12, 31)
        )),
        "{plan}"
    );
    assert_eq!(
        moto().keys(&bucket).len(),
        times.len() * 2,
        "dry run deletes nothing"
    );

    store_cmd(&bucket).args(policy).assert().success();
    let mut want: Vec<String> = expected
        .iter()
        .flat_map(|k| [k.clone(), format!("{k}.manifest.json")])
        .collect();
    want.sort();
    assert_eq!(moto().keys(&bucket), want);
}

fn mongo_zip(content: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("shop/items.bson", opts).unwrap();
    w.write_all(content).unwrap();
    w.finish().unwrap().into_inner()
}

fn mongo_manifest(key: &str, body: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": 1, "tool": "backhaul", "tool_version": "0", "kind": "mongo", "stage": "prod",
        "database": "shop", "key": key, "timestamp": "2025-03-01_00h00m00s", "timezone": "UTC",
        "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T00:00:00Z",
        "compression": "zip", "raw_bytes": body.len(), "stored_bytes": body.len(),
        "sha256": sha256_hex(body), "parts": 1,
        "source": {"dump_tool": "mongodump", "dump_tool_version": "100", "host": "h"}
    }))
    .unwrap()
}

#[test]
fn mongo_zip_artifacts_are_listed_verified_and_pruned() {
    let bucket = moto().bucket("mongo");
    let content = b"a mongodump bson file ".repeat(100);
    let good = mongo_zip(&content);
    let mut bad = good.clone();
    let at = bad.windows(8).position(|w| w == b"mongodum").unwrap() + 40;
    bad[at] ^= 0xff;
    let good_key = "prod/2025-03-01_00h00m00s_MONGO/shop_2025-03-01_00h00m00s.zip";
    let bad_key = "prod/2025-03-02_00h00m00s_MONGO/shop_2025-03-02_00h00m00s.zip";
    moto().put(&bucket, good_key, good.clone());
    moto().put(
        &bucket,
        &format!("{good_key}.manifest.json"),
        mongo_manifest(good_key, &good),
    );
    // The manifest matches the damaged bytes: only the structure check can catch it.
    moto().put(&bucket, bad_key, bad.clone());
    moto().put(
        &bucket,
        &format!("{bad_key}.manifest.json"),
        mongo_manifest(bad_key, &bad),
    );

    let out = store_cmd(&bucket)
        .args(["list", "--json", "--kind", "mongo"])
        .assert()
        .success();
    let rows = summaries(&out.get_output().stdout);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["kind"], "mongo");

    let out = store_cmd(&bucket)
        .args(["verify", good_key])
        .assert()
        .success();
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["details"]["zip_entries"], 1, "{line}");
    let out = store_cmd(&bucket)
        .args(["verify", bad_key])
        .assert()
        .code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["details"]["structure"], "failed", "{line}");

    // The failed newest backup never counts as good: the older good one survives --keep-last 1.
    let out = store_cmd(&bucket)
        .args(["prune", "--keep-last", "1", "--kind", "mongo"])
        .assert()
        .success();
    let plan = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(plan.contains(&format!("keep {good_key}")), "{plan}");
    assert!(
        plan.contains(&format!("keep {bad_key}")),
        "newer than newest good: {plan}"
    );
}

#[test]
fn backup_prune_applies_the_policy_after_a_successful_run() {
    let fx = cluster();
    let pg = &fx.pg;
    let bucket = moto().bucket("bprune");
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("BACKUP_PRUNE", "true")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("refusing to prune"));
    assert!(moto().keys(&bucket).is_empty(), "nothing ran");

    let keep_last = [
        ("BACKUP_PRUNE", "true".to_string()),
        ("KEEP_LAST", "1".to_string()),
    ];
    backup(pg, &bucket, "zstd", &keep_last);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let newest = backup(pg, &bucket, "zstd", &keep_last);
    assert_eq!(
        moto().keys(&bucket),
        vec![newest.clone(), format!("{newest}.manifest.json")]
    );
}
