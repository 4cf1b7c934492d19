//! `backhaul restore` and `verify --restore-into` for MongoDB artifacts with the real
//! mongodump/mongorestore against the suite's server and moto: a restore into the dumped
//! database and into another, a tampered object that restores nothing, duplicates without
//! `--clean`, a URI that never reaches argv, and verification of a corrupt gzip.

use std::path::Path;

use serde_json::Value;
use tempfile::TempDir;

use crate::common::mongod::*;
use crate::common::*;

const PASSWORD: &str = "s3cr@t-pw";
const PASSWORD_ENCODED: &str = "s3cr%40t-pw";
const USERINFO: &str = "backup:s3cr%40t-pw";

/// A source server holding `shop`, a target server (both with a login), moto, a work dir.
struct Setup {
    tmp: TempDir,
    bucket: String,
    source: Mongod,
    target: Mongod,
}

impl Setup {
    fn new(hint: &str) -> Setup {
        let auth = |seed| {
            Mongod::start(MongodOpts {
                auth: Some(("backup", PASSWORD)),
                seed: Some(seed),
                ..Default::default()
            })
        };
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("work")).unwrap();
        Setup {
            tmp,
            bucket: moto().bucket(hint),
            source: auth(shop_seed("shop")),
            target: auth(serde_json::json!({})),
        }
    }

    fn work(&self) -> std::path::PathBuf {
        self.tmp.path().join("work")
    }

    fn target_uri(&self, path: &str) -> String {
        self.target.uri(Some(USERINFO), path)
    }

    /// Backs up `shop` in `format` and returns the artifact key.
    fn backup(&self, format: &str) -> String {
        let out = self
            .cmd()
            .args(["backup", "--only", "mongo"])
            .env(
                "MONGO_CONNECTION_STRING",
                self.source.uri(Some(USERINFO), "?authSource=admin"),
            )
            .env("MONGO_DB_NAME", "shop")
            .env("MONGO_FORMAT", format)
            .assert()
            .success();
        summaries(&out.get_output().stdout)[0]["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = backhaul_moto();
        cmd.env("MONGODUMP_PATH", mongodump())
            .env("MONGORESTORE_PATH", mongorestore())
            .env("BACKUP_WORK_DIR", self.work())
            .env("S3_BUCKET", &self.bucket)
            .env("STAGE", "prod");
        cmd
    }

    /// `restore latest --kind mongo --database shop --to <to>`.
    fn restore(&self, to: &str, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.cmd();
        cmd.args(["restore", "latest", "--kind", "mongo", "--database", "shop"])
            .args(["--to", to])
            .args(extra);
        cmd
    }

    fn assert_work_dir_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work()).unwrap().flatten().collect();
        assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    }
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
    let out = s
        .restore(&s.target_uri("?authSource=admin"), &[])
        .assert()
        .success();
    assert_no_secret(out.get_output());
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "ok");
    assert_eq!(line["database"], "shop");
    assert_eq!(line["checksum_verified"], true);
    assert_same_database(&s.target.database("shop"), &s.source.database("shop"));
    s.assert_work_dir_empty();

    // The URI's path names another database: the collections land there, and only there.
    let out = s
        .restore(&s.target_uri("copy?authSource=admin"), &[])
        .assert()
        .success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["database"], "copy");
    assert_same_database(&s.target.database("copy"), &s.source.database("shop"));
    let dbs: Vec<String> = s
        .target
        .state()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        dbs,
        ["admin", "copy", "shop"],
        "shop and copy only (admin: the users)"
    );
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
        let out = s
            .restore(&s.target_uri("?authSource=admin"), &["--clean"])
            .assert()
            .code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("checksum mismatch"), "{format}: {err}");
        let dbs: Vec<String> = s
            .target
            .state()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(dbs, ["admin"], "{format}: nothing but the target's users");
        s.assert_work_dir_empty();
        s.cmd().args(["verify", &key]).assert().code(1);
    }
}

#[test]
fn existing_data_needs_clean() {
    let s = Setup::new("mrclean");
    s.backup("zip");
    let to = s.target_uri("?authSource=admin");
    s.restore(&to, &[]).assert().success();
    let out = s.restore(&to, &[]).assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("duplicate key"), "{err}");
    assert_no_secret(out.get_output());
    s.assert_work_dir_empty();
    s.restore(&to, &["--clean"]).assert().success();
    assert_same_database(&s.target.database("shop"), &s.source.database("shop"));
    s.assert_work_dir_empty();
}

/// The spy's log: one entry per call, each its `arg`s and `config` line.
fn calls(log: &Path) -> Vec<(String, Vec<String>, Option<String>)> {
    let mut out: Vec<(String, Vec<String>, Option<String>)> = Vec::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        if let Some(tool) = line.strip_prefix("call ") {
            out.push((tool.to_string(), Vec::new(), None));
        } else if let Some(a) = line.strip_prefix("arg ") {
            out.last_mut().unwrap().1.push(a.to_string());
        } else if let Some(c) = line.strip_prefix("config ") {
            out.last_mut().unwrap().2 = Some(c.to_string());
        }
    }
    out
}

#[test]
fn uri_only_in_a_config_pipe() {
    for format in ["zip", "archive"] {
        let s = Setup::new("mrargv");
        s.backup(format);
        let log = s.tmp.path().join("argv.log");
        let spied = spy(s.tmp.path(), &mongorestore(), &log);
        let out = s
            .restore(&s.target_uri("copy?authSource=admin"), &[])
            .env("MONGORESTORE_PATH", &spied)
            .env("BACKHAUL_LOG", "debug")
            .assert()
            .success();
        assert_no_secret(out.get_output());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED));
        assert!(!text.contains("mongodb://"), "{text}");
        let restores: Vec<_> = calls(&log)
            .into_iter()
            .filter(|(_, args, _)| args.iter().any(|a| a == "--config"))
            .collect();
        assert_eq!(restores.len(), 1, "{text}");
        let (_, args, config) = &restores[0];
        let config: Vec<&str> = config.as_deref().unwrap().split_whitespace().collect();
        // Read from a pipe: the password is never in a file.
        assert_eq!(config[1..], ["600", "fifo", "uri"], "{config:?}");
        assert!(config[0].starts_with("/dev/fd/"), "{config:?}");
        assert!(args.iter().any(|a| a == "--stopOnError"), "{args:?}");
        assert!(args.iter().any(|a| a == "--nsTo=copy.$coll$"), "{args:?}");
        s.assert_work_dir_empty();
    }
}

#[test]
fn verify_restore_into_records_document_counts() {
    let s = Setup::new("mrverify");
    let key = s.backup("zip");
    let out = s
        .cmd()
        .args([
            "verify",
            &key,
            "--restore-into",
            &s.target_uri("?authSource=admin"),
        ])
        .assert()
        .success();
    assert_no_secret(out.get_output());
    let man: Value =
        serde_json::from_slice(&moto().get(&s.bucket, &format!("{key}.manifest.json"))).unwrap();
    let v = &man["verification"];
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["details"]["restore"], "ok", "{v}");
    assert_eq!(v["details"]["restored_into"], "shop", "{v}");
    let cols = &v["details"]["collections"];
    assert_eq!(cols["shop.users"], 40, "{v}");
    assert_eq!(cols["shop.orders"], 120, "{v}");
    assert_eq!(cols["shop.empty"], 0, "{v}");
    assert_same_database(&s.target.database("shop"), &s.source.database("shop"));
    s.assert_work_dir_empty();

    // A manifest whose counts disagree with what was restored fails verification.
    let man_key = format!("{key}.manifest.json");
    let mut m: Value = serde_json::from_slice(&moto().get(&s.bucket, &man_key)).unwrap();
    m["source"]["collections"]["shop.orders"] = 121.into();
    moto().put(&s.bucket, &man_key, serde_json::to_vec(&m).unwrap());
    let out = s
        .cmd()
        .args([
            "verify",
            &key,
            "--restore-into",
            &s.target_uri("?authSource=admin"),
        ])
        .assert()
        .code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("shop.orders: 120 restored, 121 in the manifest"),
        "{line}"
    );
}

#[test]
fn verify_catches_a_corrupt_gzip_whose_checksum_matches() {
    let s = Setup::new("mrgzip");
    let key = s.backup("archive");
    let mut body = moto().get(&s.bucket, &key);
    let n = body.len();
    body[n - 8] ^= 0xff; // gzip CRC-32 trailer
    let man_key = format!("{key}.manifest.json");
    let mut man: Value = serde_json::from_slice(&moto().get(&s.bucket, &man_key)).unwrap();
    man["sha256"] = sha256_hex(&body).into();
    moto().put(&s.bucket, &man_key, serde_json::to_vec(&man).unwrap());
    moto().put(&s.bucket, &key, body);
    let out = s.cmd().args(["verify", &key]).assert().code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["details"]["checksum"], "ok", "{line}");
    assert_eq!(line["details"]["structure"], "failed", "{line}");
}
