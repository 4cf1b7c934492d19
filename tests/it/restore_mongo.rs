//! `backhaul restore` and `verify --restore-into` for MongoDB artifacts against the stand-in
//! mongodump/mongorestore and moto: zip and archive round trips, renaming, a tampered object
//! that restores nothing, duplicates without `--clean`, and a URI that never reaches argv.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::*;

const URI: &str = "mongodb://backup:s3cr%40t-pw@mongo.internal:27017/?authSource=admin";
const URI_COPY: &str = "mongodb://backup:s3cr%40t-pw@mongo.internal:27017/copy?authSource=admin";
const PASSWORD: &str = "s3cr@t-pw";
const PASSWORD_ENCODED: &str = "s3cr%40t-pw";

fn standins() -> PathBuf {
    tests_dir().join("standins")
}

fn path_env() -> String {
    format!(
        "{}:{}",
        standins().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A source stand-in server holding `shop`, an empty target server, and an empty work dir.
struct Setup {
    tmp: TempDir,
    bucket: String,
}

impl Setup {
    fn new(hint: &str) -> Setup {
        let tmp = tempfile::Builder::new()
            .prefix("backhaul-mrestore-test-")
            .tempdir()
            .unwrap();
        for d in ["server", "target", "work"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let s = Setup {
            tmp,
            bucket: moto().bucket(hint),
        };
        fixture(&s.server(), "shop");
        s
    }

    fn server(&self) -> PathBuf {
        self.tmp.path().join("server")
    }
    fn target(&self) -> PathBuf {
        self.tmp.path().join("target")
    }
    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// Backs up `shop` in `format` and returns the artifact key.
    fn backup(&self, format: &str) -> String {
        let out = self
            .cmd(&self.server())
            .arg("backup")
            .env("MONGO_CONNECTION_STRING", URI)
            .env("MONGO_DB_NAME", "shop")
            .env("MONGO_FORMAT", format)
            .assert()
            .success();
        summaries(&out.get_output().stdout)[0]["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// backhaul against moto and the stand-in server `data`.
    fn cmd(&self, data: &Path) -> assert_cmd::Command {
        let mut cmd = backhaul_moto();
        cmd.env("PATH", path_env())
            .env("BACKHAUL_STANDIN_MONGO_DATA", data)
            .env("BACKHAUL_STANDIN_MONGO_PASSWORD", PASSWORD)
            .env("BACKUP_WORK_DIR", self.work())
            .env("S3_BUCKET", &self.bucket)
            .env("STAGE", "prod");
        cmd
    }

    /// `restore latest --kind mongo --database shop --to <to>` into the target server.
    fn restore(&self, to: &str, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.cmd(&self.target());
        cmd.args(["restore", "latest", "--kind", "mongo", "--database", "shop"])
            .args(["--to", to])
            .args(extra);
        cmd
    }

    fn assert_work_dir_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work()).unwrap().flatten().collect();
        assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    }

    /// Collections (files) the target server holds for `db`.
    fn target_files(&self, db: &str) -> Vec<String> {
        match std::fs::read_dir(self.target().join(db)) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn fixture(data: &Path, db: &str) {
    let out = Command::new("python3")
        .arg(standins().join("mongo_fixture.py"))
        .arg("--data")
        .arg(data)
        .args(["--db", db, "--large-mb", "0.3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_same(a: &Path, b: &Path) {
    let cmp = Command::new("python3")
        .arg(standins().join("mongo_fixture.py"))
        .arg("--compare")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}

fn assert_no_secret(out: &std::process::Output) {
    for text in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED),
            "secret leaked into: {text}"
        );
    }
}

#[test]
fn zip_restores_into_the_dumped_database_and_into_another() {
    let s = Setup::new("mrzip");
    s.backup("zip");
    let out = s.restore(URI, &[]).assert().success();
    assert_no_secret(out.get_output());
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "ok");
    assert_eq!(line["database"], "shop");
    assert_eq!(line["checksum_verified"], true);
    assert_same(&s.server(), &s.target());
    s.assert_work_dir_empty();

    // The URI's path names another database: the collections land there.
    let out = s.restore(URI_COPY, &[]).assert().success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["database"], "copy");
    assert_same(&s.server().join("shop"), &s.target().join("copy"));
    s.assert_work_dir_empty();
}

#[test]
fn archive_restores() {
    let s = Setup::new("mrarch");
    let key = s.backup("archive");
    assert!(key.ends_with(".archive.gz"), "{key}");
    let out = s.restore(URI, &[]).assert().success();
    assert_no_secret(out.get_output());
    assert_same(&s.server(), &s.target());
    s.assert_work_dir_empty();
}

#[test]
fn tampered_objects_restore_nothing_and_fail_verification() {
    for format in ["zip", "archive"] {
        let s = Setup::new("mrtamper");
        let key = s.backup(format);
        let mut body = moto().get(&s.bucket, &key);
        let at = body.len() / 2;
        for b in &mut body[at..at + 16] {
            *b ^= 0xff;
        }
        moto().put(&s.bucket, &key, body);
        let out = s.restore(URI, &["--clean"]).assert().code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("checksum mismatch"), "{format}: {err}");
        assert_eq!(s.target_files("shop"), Vec::<String>::new(), "{format}");
        s.assert_work_dir_empty();
        s.cmd(&s.target()).args(["verify", &key]).assert().code(1);
    }
}

#[test]
fn existing_data_needs_clean() {
    let s = Setup::new("mrclean");
    s.backup("zip");
    fixture(&s.target(), "shop");
    let out = s.restore(URI, &[]).assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("duplicate key"), "{err}");
    s.assert_work_dir_empty();
    s.restore(URI, &["--clean"]).assert().success();
    assert_same(&s.server(), &s.target());
    s.assert_work_dir_empty();
}

#[test]
fn uri_only_in_a_private_config_file() {
    for format in ["zip", "archive"] {
        let s = Setup::new("mrargv");
        s.backup(format);
        let log = s.tmp.path().join("argv.log");
        let out = s
            .restore(URI, &[])
            .env("BACKHAUL_STANDIN_ARGV_LOG", &log)
            .env("BACKHAUL_LOG", "debug")
            .assert()
            .success();
        assert_no_secret(out.get_output());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED));
        let calls: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let restores: Vec<_> = calls
            .iter()
            .filter(|c| c["tool"] == "mongorestore")
            .collect();
        assert_eq!(restores.len(), 1, "{calls:?}");
        let call = restores[0];
        assert_eq!(call["config_mode"], "0600", "{call}");
        assert_eq!(call["config_keys"], serde_json::json!(["uri"]), "{call}");
        let argv = serde_json::to_string(&call["argv"]).unwrap();
        assert!(!argv.contains("mongodb://"), "{argv}");
        assert!(argv.contains("--stopOnError"), "{argv}");
        let config = call["config"].as_str().unwrap();
        assert!(!Path::new(config).exists(), "config {config} left behind");
        s.assert_work_dir_empty();
    }
}

#[test]
fn verify_restore_into_records_document_counts() {
    let s = Setup::new("mrverify");
    let key = s.backup("zip");
    let out = s
        .cmd(&s.target())
        .args(["verify", &key, "--restore-into", URI])
        .assert()
        .success();
    assert_no_secret(out.get_output());
    let man: serde_json::Value =
        serde_json::from_slice(&moto().get(&s.bucket, &format!("{key}.manifest.json"))).unwrap();
    let v = &man["verification"];
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["details"]["restore"], "ok", "{v}");
    assert_eq!(v["details"]["restored_into"], "shop", "{v}");
    let cols = &v["details"]["collections"];
    assert_eq!(cols["shop.users"], 200, "{v}");
    assert_eq!(cols["shop.orders"], 500, "{v}");
    assert_eq!(cols["shop.empty"], 0, "{v}");
    assert_same(&s.server(), &s.target());
    s.assert_work_dir_empty();
}

#[test]
fn verify_catches_a_corrupt_gzip_whose_checksum_matches() {
    let s = Setup::new("mrgzip");
    let key = s.backup("archive");
    let mut body = moto().get(&s.bucket, &key);
    let n = body.len();
    body[n - 8] ^= 0xff; // gzip CRC-32 trailer
    let man_key = format!("{key}.manifest.json");
    let mut man: serde_json::Value =
        serde_json::from_slice(&moto().get(&s.bucket, &man_key)).unwrap();
    man["sha256"] = sha256_hex(&body).into();
    moto().put(&s.bucket, &key, body);
    moto().put(&s.bucket, &man_key, serde_json::to_vec(&man).unwrap());
    let out = s.cmd(&s.target()).args(["verify", &key]).assert().code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["details"]["checksum"], "ok", "{line}");
    assert_eq!(line["details"]["structure"], "failed", "{line}");
}
