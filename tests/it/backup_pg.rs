//! `backhaul backup` for PostgreSQL against a real cluster and moto: round trips in every
//! compression mode, the seed-compatible layout, multipart, secret hygiene, and failures that
//! leave nothing behind.

use crate::common::contract::Contract;
use crate::common::*;

const PASSWORD: &str = APP_PASSWORD;

/// Role `app` and database `db` holding FIXTURE_SQL.
fn cluster_with_fixture(db: &str) -> Fixture {
    Fixture::builder("backup-pg")
        .databases(&[(db, FIXTURE_SQL)])
        .start()
}

fn run_backup(
    pg: &Pg,
    bucket: &str,
    compression: &str,
    db: &str,
) -> (serde_json::Value, assert_cmd::assert::Assert) {
    run_backup_with(pg, bucket, compression, db, &[])
}

fn run_backup_with(
    pg: &Pg,
    bucket: &str,
    compression: &str,
    db: &str,
    env: &[(&str, &str)],
) -> (serde_json::Value, assert_cmd::assert::Assert) {
    let mut cmd = store_cmd(bucket);
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, db);
    cmd.env("PG_COMPRESSION", compression)
        .envs(env.iter().copied());
    let assert = cmd.assert().success();
    let lines = summaries(&assert.get_output().stdout);
    assert_eq!(lines.len(), 1, "one summary line per artifact");
    (lines[0].clone(), assert)
}

fn restore_and_compare(pg: &Pg, object: &[u8], compression: &str, source_db: &str) {
    let archive = match compression {
        "zstd" => zstd::decode_all(object).unwrap(),
        _ => object.to_vec(),
    };
    assert_eq!(&archive[..5], b"PGDMP", "a pg_dump custom-format archive");
    let file = pg.dir.path().join(format!("restore-{compression}.dump"));
    std::fs::write(&file, &archive).unwrap();
    let target = format!("restored_{compression}");
    pg.pg_restore_file(&file, &target);
    let (a, b) = (pg.fingerprint(source_db), pg.fingerprint(&target));
    assert_eq!(
        a.len(),
        6,
        "fixture has 3 tables, 2 sequences, 1 view: {a:?}"
    );
    assert_eq!(a, b);
}

fn round_trip(compression: &str, suffix: &str) {
    round_trip_with(compression, suffix, &[]);
}

fn round_trip_with(compression: &str, suffix: &str, env: &[(&str, &str)]) {
    let fx = cluster_with_fixture("app");
    let pg = &fx.pg;
    let bucket = moto().bucket(&format!("rt-{compression}"));
    let (line, _) = run_backup_with(pg, &bucket, compression, "app", env);
    let key = line["key"].as_str().unwrap().to_string();
    assert!(key.ends_with(suffix), "{key}");
    let object = moto().get(&bucket, &key);
    assert_eq!(line["sha256"], sha256_hex(&object));
    assert_eq!(line["stored_bytes"], object.len() as u64);
    restore_and_compare(pg, &object, compression, "app");
}

#[test]
fn zstd_round_trip() {
    round_trip("zstd", ".dump.zst");
}

/// A fast (negative) level is still one zstd frame any zstd reads back.
#[test]
fn zstd_fast_level_round_trip() {
    round_trip_with("zstd", ".dump.zst", &[("PG_ZSTD_LEVEL", "-5")]);
}

#[test]
fn pg_compression_round_trip_is_a_plain_dump() {
    round_trip("pg", ".dump");
}

#[test]
fn no_compression_round_trip() {
    round_trip("none", ".dump");
}

#[test]
fn key_and_manifest_follow_the_seed_layout() {
    let fx = cluster_with_fixture("app_db");
    let pg = &fx.pg;
    let bucket = moto().bucket("layout");
    let (line, _) = run_backup(pg, &bucket, "zstd", "app_db");
    let key = line["key"].as_str().unwrap();
    // prod/<ts>_PGSQL/backup_prod_app_db_<ts>.dump.zst with ts = %Y-%m-%d_%Hh%Mm%Ss
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(parts.len(), 3, "{key}");
    assert_eq!(parts[0], "prod");
    let ts = parts[1].strip_suffix("_PGSQL").expect("_PGSQL directory");
    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d_%Hh%Mm%Ss").expect("seed timestamp format");
    assert_eq!(parts[2], format!("backup_prod_app_db_{ts}.dump.zst"));
    assert_eq!(
        moto().keys(&bucket),
        vec![key.to_string(), format!("{key}.manifest.json")]
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
    let object = moto().get(&bucket, key);
    assert_eq!(manifest["key"], key);
    assert_eq!(manifest["kind"], "postgres");
    assert_eq!(manifest["stage"], "prod");
    assert_eq!(manifest["database"], "app_db");
    assert_eq!(manifest["timestamp"], ts);
    assert_eq!(manifest["compression"], "zstd");
    assert_eq!(manifest["sha256"], sha256_hex(&object));
    assert_eq!(manifest["stored_bytes"], object.len() as u64);
    assert_eq!(
        manifest["raw_bytes"],
        zstd::decode_all(&object[..]).unwrap().len() as u64
    );
    assert_eq!(manifest["source"]["dump_tool"], "pg_dump");
    assert!(manifest["source"]["server_version"]
        .as_str()
        .unwrap()
        .starts_with(&pg.psql("postgres", "show server_version")[..2]));
    assert_eq!(manifest["tool_version"], env!("CARGO_PKG_VERSION"));
    // Smaller than one part: a single PutObject, no multipart upload.
    assert_eq!(manifest["parts"], 1);
}

#[test]
fn large_database_goes_through_real_multipart() {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("big");
    // ~24 MB of incompressible bytes: with 5 MiB parts and no compression, at least 4 parts.
    pg.psql("big", "create table blobs as select g as id, decode(string_agg(md5(g::text || '-' || i), ''), 'hex') as b from generate_series(1, 1500) g, generate_series(1, 1000) i group by g");
    let bucket = moto().bucket("multipart");
    let rec = Contract::start();
    let mut cmd = rec.backhaul();
    cmd.arg("backup");
    pg_env(&mut cmd, &pg, "app", PASSWORD, "big");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("PG_COMPRESSION", "none")
        .env("BACKHAUL_PART_SIZE_MIB", "5");
    let out = cmd.assert().success();
    let line = &summaries(&out.get_output().stdout)[0];
    let key = line["key"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
    assert!(manifest["parts"].as_u64().unwrap() >= 4, "{manifest}");
    let object = moto().get(&bucket, key);
    assert!(object.len() > 20 << 20);
    assert_eq!(manifest["sha256"], sha256_hex(&object));
    assert_eq!(moto().multipart_uploads(&bucket), 0);
    restore_and_compare_one_table(&pg, &object);
    rec.backhaul()
        .args(["verify", "latest", "--stage", "prod", "--bucket", &bucket])
        .assert()
        .success();
    // Every S3 request of the backup and the verify is one real S3 accepts (and none is made
    // on an upload that was already completed).
    rec.check(&[
        "s3:CreateMultipartUpload",
        "s3:UploadPart",
        "s3:CompleteMultipartUpload",
        "s3:PutObject",
        "s3:ListObjectsV2",
        "s3:GetObject",
    ]);

    // Issue 32: artifact bytes are sent unsigned (SigV4 would hash every byte a second time);
    // each part carries the CRC32 that S3 checks, and the manifest's SHA-256 covers the whole.
    let requests = rec.requests();
    let parts: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .collect();
    assert!(parts.len() >= 4, "{} parts", parts.len());
    for p in &parts {
        assert_unsigned_with_crc32(p);
    }
    // The manifest, small, is still signed (its body's SHA-256 in the signature).
    let put_manifest = requests
        .iter()
        .find(|r| r.method == "PUT" && r.target.contains(".manifest.json"))
        .unwrap();
    let signed = &put_manifest.headers["x-amz-content-sha256"];
    assert_eq!(signed, &sha256_hex(&put_manifest.body), "{signed}");
    // What backhaul itself spent is logged at the end, with the dump's size.
    let usage = String::from_utf8_lossy(&out.get_output().stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "resources")
        .expect("a resources line");
    assert_eq!(usage["raw_bytes"], manifest["raw_bytes"], "{usage}");
    assert!(usage["user_s"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(usage["minor_faults"].as_u64().unwrap() > 0, "{usage}");

    // An artifact smaller than a part: one PutObject, unsigned too.
    pg.create_db("tiny");
    pg.psql("tiny", "create table t as select 1 as one");
    let mut cmd = rec.backhaul();
    cmd.arg("backup");
    pg_env(&mut cmd, &pg, "app", PASSWORD, "tiny");
    cmd.env("S3_BUCKET", &bucket).env("STAGE", "prod");
    let out = cmd.assert().success();
    let key = summaries(&out.get_output().stdout)[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let requests = rec.requests();
    let put = requests
        .iter()
        .find(|r| r.method == "PUT" && r.target.split('?').next().unwrap().ends_with(&key))
        .expect("the artifact's PutObject");
    assert!(!put.target.contains("partNumber="));
    assert_unsigned_with_crc32(put);
    rec.check(&["s3:PutObject"]);
}

/// An S3 upload of artifact bytes: `UNSIGNED-PAYLOAD` (signed headers, body not hashed into
/// the signature) and the body's CRC32, which S3 checks, in `x-amz-checksum-crc32`.
fn assert_unsigned_with_crc32(r: &crate::common::contract::Recorded) {
    use base64::Engine as _;
    assert_eq!(
        r.headers.get("x-amz-content-sha256").map(String::as_str),
        Some("UNSIGNED-PAYLOAD"),
        "{} {:?}",
        r.target,
        r.headers
    );
    assert!(
        r.headers["authorization"].contains("x-amz-content-sha256"),
        "the payload mode itself is signed: {:?}",
        r.headers
    );
    let crc =
        base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&r.body).to_be_bytes());
    assert_eq!(
        r.headers.get("x-amz-checksum-crc32"),
        Some(&crc),
        "{} {:?}",
        r.target,
        r.headers
    );
}

fn restore_and_compare_one_table(pg: &Pg, object: &[u8]) {
    let file = pg.dir.path().join("big.dump");
    std::fs::write(&file, object).unwrap();
    pg.pg_restore_file(&file, "big_restored");
    assert_eq!(pg.fingerprint("big"), pg.fingerprint("big_restored"));
}

#[test]
fn password_never_reaches_argv_or_output() {
    let fx = cluster_with_fixture("app");
    let pg = &fx.pg;
    let bucket = moto().bucket("argv");
    let log = pg.dir.path().join("argv.log");
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env(
            "PG_DUMP_PATH",
            tests_dir().join("fixtures/pg_dump_argv_logger"),
        )
        .env("REAL_PG_DUMP", pg.bin.join("pg_dump"))
        .env("ARGV_LOG", &log)
        .env("BACKHAUL_LOG", "debug");
    let out = cmd.assert().success();
    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(
        argv.contains("--dbname=postgresql://app@127.0.0.1:"),
        "{argv}"
    );
    let encoded = "p%40ss%3Aw%2Frd%25%23%3F%26%3D";
    for text in [
        argv.as_str(),
        &String::from_utf8_lossy(&out.get_output().stdout),
        &String::from_utf8_lossy(&out.get_output().stderr),
    ] {
        assert!(
            !text.contains(PASSWORD) && !text.contains(encoded),
            "secret leaked into: {text}"
        );
    }
    let keys = moto().keys(&bucket);
    let manifest = String::from_utf8(moto().get(&bucket, &keys[1])).unwrap();
    assert!(!manifest.contains(PASSWORD) && !manifest.contains(encoded));
}

/// Runs a backup expected to fail and checks that nothing at all is left in the bucket.
fn assert_failed_cleanly(cmd: &mut assert_cmd::Command, bucket: &str, expect_in_error: &str) {
    let out = cmd.assert().code(1);
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], "failed");
    let err = lines[0]["error"].as_str().unwrap();
    assert!(
        err.contains(expect_in_error),
        "error {err:?} should mention {expect_in_error:?}"
    );
    assert!(!err.contains(PASSWORD));
    assert_eq!(
        moto().keys(bucket),
        Vec::<String>::new(),
        "no object under any key"
    );
    assert_eq!(
        moto().multipart_uploads(bucket),
        0,
        "no dangling multipart upload"
    );
}

#[test]
fn missing_database_fails_and_leaves_nothing() {
    let fx = cluster_with_fixture("app");
    let pg = &fx.pg;
    let bucket = moto().bucket("missing");
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "does_not_exist");
    cmd.env("S3_BUCKET", &bucket).env("STAGE", "prod");
    assert_failed_cleanly(&mut cmd, &bucket, "does_not_exist\" does not exist");
}

#[test]
fn wrong_password_fails_and_leaves_nothing() {
    let fx = cluster_with_fixture("app");
    let pg = &fx.pg;
    let bucket = moto().bucket("wrongpw");
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", "not-the-password", "app");
    cmd.env("S3_BUCKET", &bucket).env("STAGE", "prod");
    assert_failed_cleanly(&mut cmd, &bucket, "password authentication failed");
}

#[test]
fn pg_dump_killed_midway_aborts_the_multipart_upload() {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("big");
    pg.psql("big", "create table blobs as select g as id, decode(string_agg(md5(g::text || '-' || i), ''), 'hex') as b from generate_series(1, 1500) g, generate_series(1, 1000) i group by g");
    let bucket = moto().bucket("killed");
    let rec = Contract::start();
    let mut cmd = rec.backhaul();
    cmd.arg("backup");
    pg_env(&mut cmd, &pg, "app", PASSWORD, "big");
    // 12 MB written before death: two 5 MiB parts are already uploading when it dies.
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("PG_COMPRESSION", "none")
        .env("BACKHAUL_PART_SIZE_MIB", "5")
        .env(
            "PG_DUMP_PATH",
            tests_dir().join("fixtures/pg_dump_dies_midway"),
        )
        .env("REAL_PG_DUMP", pg.bin.join("pg_dump"))
        .env("DIE_AFTER_BYTES", "12000000");
    assert_failed_cleanly(&mut cmd, &bucket, "killed by signal 9");
    rec.check(&["s3:CreateMultipartUpload", "s3:AbortMultipartUpload"]);
}

#[test]
fn several_databases_one_artifact_each_with_one_timestamp() {
    let fx = cluster_with_fixture("one");
    let pg = &fx.pg;
    pg.create_db("two");
    pg.psql(
        "two",
        "create table t (x int); insert into t values (1), (2)",
    );
    let bucket = moto().bucket("multi");
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "one,two");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "uat")
        .env("BACKUP_TIMEZONE", "+08:00");
    let out = cmd.assert().success();
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 2);
    let dirs: Vec<&str> = lines
        .iter()
        .map(|l| l["key"].as_str().unwrap().rsplit_once('/').unwrap().0)
        .collect();
    assert_eq!(dirs[0], dirs[1], "one timestamp per run");
    assert!(lines[0]["key"]
        .as_str()
        .unwrap()
        .contains("backup_uat_one_"));
    assert!(lines[1]["key"]
        .as_str()
        .unwrap()
        .contains("backup_uat_two_"));
    assert_eq!(moto().keys(&bucket).len(), 4);
}

#[test]
fn file_destination_round_trip() {
    let fx = cluster_with_fixture("app");
    let pg = &fx.pg;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = backhaul();
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    cmd.env("STAGE", "dev")
        .arg("backup")
        .arg("--dest")
        .arg(format!("file://{}", dir.path().display()));
    let out = cmd.assert().success();
    let key = summaries(&out.get_output().stdout)[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let object = std::fs::read(dir.path().join(&key)).unwrap();
    assert!(dir.path().join(format!("{key}.manifest.json")).exists());
    restore_and_compare(pg, &object, "zstd", "app");
}

#[test]
fn older_pg_dump_than_server_is_refused_with_the_version_needed() {
    let fx = cluster_with_fixture("app");
    let pg = &fx.pg;
    let bucket = moto().bucket("oldclient");
    let major = pg.psql(
        "postgres",
        "select current_setting('server_version_num')::int / 10000",
    );
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "app");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("PG_DUMP_PATH", tests_dir().join("fixtures/pg_dump_old"));
    assert_failed_cleanly(
        &mut cmd,
        &bucket,
        &format!("pg_dump 12.0 is older than the server ({major}."),
    );
    let out = cmd.assert().code(1);
    let err = summaries(&out.get_output().stdout)[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.ends_with(&format!("pg_dump must be at least version {major}; install postgresql-client-{major} or set PG_DUMP_PATH")), "{err}");
}
