//! `backhaul backup` for MongoDB with the real mongodump against the suite's server and moto:
//! zip and archive artifacts, a URI that never reaches argv or output, PostgreSQL and MongoDB
//! failing independently, and failures that leave nothing behind (no object, no upload, no
//! temp dir). A dump that dies midway needs a tool that crashes on cue: the stand-in
//! mongodump (tests/standins) plays that part.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::mongod::*;
use crate::common::*;

const USERINFO: &str = "backup:s3cr%40t-pw";
const PASSWORD: &str = "s3cr@t-pw";
const PASSWORD_ENCODED: &str = "s3cr%40t-pw";

/// A server holding `shop` (login required) and an empty work dir.
struct Mongo {
    tmp: TempDir,
    server: Mongod,
}

impl Mongo {
    fn with_shop() -> Mongo {
        let tmp = tempfile::Builder::new()
            .prefix("backhaul-mongo-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(tmp.path().join("work")).unwrap();
        let server = Mongod::start(MongodOpts {
            auth: Some(("backup", PASSWORD)),
            seed: Some(shop_seed("shop")),
            ..Default::default()
        });
        Mongo { tmp, server }
    }

    fn uri(&self) -> String {
        self.server.uri(Some(USERINFO), "?authSource=admin")
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// `backhaul backup` for `shop` into `bucket`, as a team's task definition would set it.
    fn backup(&self, bucket: &str) -> assert_cmd::Command {
        let mut cmd = backhaul_moto();
        cmd.arg("backup")
            .env("MONGODUMP_PATH", mongodump())
            .env("MONGO_CONNECTION_STRING", self.uri())
            .env("MONGO_DB_NAME", "shop")
            .env("BACKUP_WORK_DIR", self.work())
            .env("S3_BUCKET", bucket)
            .env("STAGE", "prod");
        cmd
    }

    fn assert_work_dir_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work()).unwrap().flatten().collect();
        assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    }
}

/// Every file under `dir`, as (`<relative path>`, bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn unzip(object: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(object)).unwrap();
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        out.push((f.name().unwrap().to_string(), bytes));
    }
    out.sort();
    out
}

fn manifest(bucket: &str, key: &str) -> serde_json::Value {
    serde_json::from_slice(&moto().get(bucket, &format!("{key}.manifest.json"))).unwrap()
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
    assert!(!err.contains(PASSWORD) && !err.contains(PASSWORD_ENCODED));
    assert_eq!(moto().keys(bucket), Vec::<String>::new(), "no object");
    assert_eq!(moto().multipart_uploads(bucket), 0, "no dangling upload");
}

#[test]
fn zip_holds_exactly_what_mongodump_wrote() {
    let m = Mongo::with_shop();
    let bucket = moto().bucket("mzip");
    let out = m.backup(&bucket).assert().success();
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "ok");
    let key = line["key"].as_str().unwrap();
    // prod/<ts>_MONGO/shop_<ts>.zip
    let parts: Vec<&str> = key.split('/').collect();
    let ts = parts[1].strip_suffix("_MONGO").expect("_MONGO directory");
    assert_eq!(parts, vec!["prod", parts[1], &format!("shop_{ts}.zip")]);
    assert_eq!(
        moto().keys(&bucket),
        vec![key.to_string(), format!("{key}.manifest.json")]
    );

    // What the real mongodump writes for the same database, run by hand.
    let by_hand = m.tmp.path().join("by-hand");
    let st = Command::new(mongodump())
        .arg(format!("--uri={}", m.uri()))
        .args(["--db", "shop", "--out"])
        .arg(&by_hand)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let object = moto().get(&bucket, key);
    let expected = tree(&by_hand);
    assert_eq!(
        expected.len(),
        8,
        "4 collections: .bson and .metadata.json each"
    );
    assert_eq!(unzip(&object), expected);

    let man = manifest(&bucket, key);
    assert_eq!(man["kind"], "mongo");
    assert_eq!(man["compression"], "zip");
    assert_eq!(man["sha256"], sha256_hex(&object));
    assert_eq!(man["stored_bytes"], object.len() as u64);
    let raw: usize = expected.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(man["raw_bytes"], raw as u64);
    assert_eq!(man["source"]["dump_tool"], "mongodump");
    assert_eq!(man["source"]["dump_tool_version"], "100.8.0");
    assert_eq!(
        man["source"]["host"],
        format!("127.0.0.1:{}", m.server.port)
    );
    assert_eq!(man["source"]["collections"]["shop.users"], 40);
    m.assert_work_dir_empty();

    // Info-ZIP agrees the streamed zip (data descriptors, zip64) is sound.
    if Command::new("unzip").arg("-v").output().is_ok() {
        let file = m.tmp.path().join("shop.zip");
        std::fs::write(&file, &object).unwrap();
        let st = Command::new("unzip")
            .arg("-tq")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stdout)
        );
    }
}

#[test]
fn archive_restores_with_mongorestore() {
    let m = Mongo::with_shop();
    let bucket = moto().bucket("march");
    let out = m
        .backup(&bucket)
        .env("MONGO_FORMAT", "archive")
        .assert()
        .success();
    let key = summaries(&out.get_output().stdout)[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.ends_with(".archive.gz"), "{key}");
    let object = moto().get(&bucket, &key);
    let man = manifest(&bucket, &key);
    assert_eq!(man["compression"], "archive-gzip");
    assert_eq!(man["sha256"], sha256_hex(&object));

    // The artifact is a plain mongodump archive: the real mongorestore takes it as it is.
    let archive = m.tmp.path().join("shop.archive.gz");
    std::fs::write(&archive, &object).unwrap();
    let target = Mongod::start(MongodOpts::default());
    let st = Command::new(mongorestore())
        .arg(format!("--uri={}", target.uri(None, "")))
        .arg(format!("--archive={}", archive.display()))
        .arg("--gzip")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_same_database(&target.database("shop"), &m.server.database("shop"));
}

#[test]
fn uri_never_reaches_argv_or_output() {
    for format in ["zip", "archive"] {
        let m = Mongo::with_shop();
        let bucket = moto().bucket("margv");
        let log = m.tmp.path().join("argv.log");
        let spied = spy(m.tmp.path(), &mongodump(), &log);
        let out = m
            .backup(&bucket)
            .env("MONGO_FORMAT", format)
            .env("MONGODUMP_PATH", &spied)
            .env("BACKHAUL_LOG", "debug")
            .assert()
            .success();
        let text = std::fs::read_to_string(&log).unwrap();
        let dumps: Vec<&str> = text.lines().filter(|l| l.starts_with("config ")).collect();
        assert_eq!(dumps.len(), 1, "{text}");
        let config: Vec<&str> = dumps[0].split_whitespace().collect();
        // Read from a pipe: the password is never in a file.
        assert_eq!(config[2..], ["600", "fifo", "uri"], "{config:?}");
        assert!(config[1].starts_with("/dev/fd/"), "{config:?}");
        assert!(!text.contains("mongodb://"), "{text}");
        for text in [
            text.clone(),
            String::from_utf8_lossy(&out.get_output().stdout).into_owned(),
            String::from_utf8_lossy(&out.get_output().stderr).into_owned(),
        ] {
            assert!(
                !text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED),
                "secret leaked into: {text}"
            );
        }
        let key = summaries(&out.get_output().stdout)[0]["key"]
            .as_str()
            .unwrap()
            .to_string();
        let man = String::from_utf8(moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
        assert!(!man.contains(PASSWORD) && !man.contains(PASSWORD_ENCODED));
    }
}

/// Also with `PG_JOBS=2`, whose pooler check runs before every target: a PostgreSQL host it
/// cannot reach fails that target, not the run's MongoDB backup.
#[test]
fn failing_postgres_does_not_stop_mongo() {
    let m = Mongo::with_shop();
    for jobs in ["1", "2"] {
        let bucket = moto().bucket("mpgfail");
        let out = m
            .backup(&bucket)
            .env("PG_DB_HOST", "127.0.0.1")
            .env("PG_DB_PORT", free_port().to_string())
            .env("PG_DB_USER", "x")
            .env("PG_DB_PASSWORD", "nope-nope")
            .env("PG_DB_NAME", "y")
            .env("PG_JOBS", jobs)
            .assert()
            .code(1);
        let lines = summaries(&out.get_output().stdout);
        assert_eq!(lines.len(), 2, "jobs {jobs}: {lines:?}");
        let line = |kind: &str| lines.iter().find(|l| l["kind"] == kind).unwrap();
        assert_eq!(line("postgres")["status"], "failed", "jobs {jobs}");
        assert_eq!(line("mongo")["status"], "ok", "jobs {jobs}");
        let error = line("postgres")["error"].as_str().unwrap().to_string();
        if jobs == "2" {
            assert!(error.contains("the dump was not started"), "{error}");
        }
        let stderr = String::from_utf8_lossy(&out.get_output().stderr);
        assert!(!error.contains("nope-nope") && !stderr.contains("nope-nope"));
        let keys = moto().keys(&bucket);
        assert_eq!(keys.len(), 2, "jobs {jobs}: {keys:?}");
        assert!(keys.iter().all(|k| k.contains("_MONGO/")), "{keys:?}");
        assert_eq!(moto().multipart_uploads(&bucket), 0);
    }
}

#[test]
fn failing_mongo_does_not_stop_postgres() {
    let pg = Pg::start();
    pg.create_user("app", "pg-pass-123");
    pg.create_db("app");
    pg.psql("app", FIXTURE_SQL);
    let m = Mongo::with_shop();
    let bucket = moto().bucket("mmfail");
    let mut cmd = m.backup(&bucket);
    pg_env(&mut cmd, &pg, "app", "pg-pass-123", "app");
    let wrong = m
        .server
        .uri(Some("backup:wrong-password"), "?authSource=admin");
    let out = cmd.env("MONGO_CONNECTION_STRING", wrong).assert().code(1);
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mongo = lines.iter().find(|l| l["kind"] == "mongo").unwrap();
    assert_eq!(mongo["status"], "failed");
    assert!(
        mongo["error"]
            .as_str()
            .unwrap()
            .contains("Authentication failed"),
        "{mongo}"
    );
    assert!(!mongo["error"].as_str().unwrap().contains("wrong-password"));
    let pg_line = lines.iter().find(|l| l["kind"] == "postgres").unwrap();
    assert_eq!(pg_line["status"], "ok");
    let keys = moto().keys(&bucket);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.contains("_PGSQL/")), "{keys:?}");
    assert_eq!(moto().multipart_uploads(&bucket), 0);
    m.assert_work_dir_empty();
}

/// The stand-in mongodump, which can die after a number of bytes (a dropped connection).
fn standin_backup(m: &Mongo, bucket: &str, large_mb: &str) -> assert_cmd::Command {
    let standins = tests_dir().join("standins");
    let data = m.tmp.path().join("standin-server");
    std::fs::create_dir_all(&data).unwrap();
    let out = Command::new("python3")
        .arg(standins.join("mongo_fixture.py"))
        .arg("--data")
        .arg(&data)
        .args(["--db", "shop", "--large-mb", large_mb])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = m.backup(bucket);
    cmd.env("MONGODUMP_PATH", standins.join("mongodump"))
        .env("BACKHAUL_STANDIN_MONGO_DATA", &data)
        .env("BACKHAUL_STANDIN_MONGO_PASSWORD", PASSWORD);
    cmd
}

#[test]
fn archive_dump_failing_midway_aborts_the_multipart_upload() {
    // ~9 MB gzipped: the failure comes after the first 5 MiB part is already uploading.
    let m = Mongo::with_shop();
    let bucket = moto().bucket("mmidway");
    let mut cmd = standin_backup(&m, &bucket, "25");
    cmd.env("MONGO_FORMAT", "archive")
        .env("BACKHAUL_PART_SIZE_MIB", "5")
        .env("BACKHAUL_STANDIN_FAIL_AFTER_BYTES", "6000000");
    assert_failed_cleanly(&mut cmd, &bucket, "connection reset by peer");
}

#[test]
fn zip_dump_failing_midway_leaves_no_temp_dir() {
    let m = Mongo::with_shop();
    let bucket = moto().bucket("mzipmid");
    let mut cmd = standin_backup(&m, &bucket, "3");
    cmd.env("BACKHAUL_STANDIN_FAIL_AFTER_BYTES", "1000000");
    assert_failed_cleanly(&mut cmd, &bucket, "connection reset by peer");
    m.assert_work_dir_empty();
}

#[test]
fn empty_dump_is_an_error() {
    // Real mongodump exits 0 and writes nothing for a collection that is not there.
    for format in ["zip", "archive"] {
        let m = Mongo::with_shop();
        let bucket = moto().bucket("mempty");
        let mut cmd = m.backup(&bucket);
        cmd.env("MONGO_FORMAT", format)
            .arg("--mongodump-arg=--collection=not_there");
        assert_failed_cleanly(&mut cmd, &bucket, "no collections in database shop");
        m.assert_work_dir_empty();
    }
}

#[test]
fn too_little_free_space_fails_before_dumping() {
    let m = Mongo::with_shop();
    let bucket = moto().bucket("mspace");
    let mut cmd = m.backup(&bucket);
    cmd.env("BACKUP_MIN_FREE_MIB", "1000000000");
    assert_failed_cleanly(&mut cmd, &bucket, "BACKUP_WORK_DIR");
    m.assert_work_dir_empty();
}

#[test]
fn bad_mongo_settings_are_config_errors() {
    for (var, value, expect) in [
        (
            "MONGO_CONNECTION_STRING",
            "http://backup:s3cr%40t-pw@h/",
            "error: MONGO_CONNECTION_STRING",
        ),
        (
            "MONGO_FORMAT",
            "tar",
            "error: MONGO_FORMAT \"tar\" is not one of zip, archive",
        ),
        (
            "MONGO_SCOPE",
            "everything",
            "error: MONGO_SCOPE \"everything\" is not one of databases, uri",
        ),
        (
            "MONGO_DB_NAME",
            "sh.op",
            "error: MONGO_DB_NAME \"sh.op\" is not a valid MongoDB database name",
        ),
    ] {
        let m = Mongo::with_shop();
        let out = m
            .backup("never-used")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env(var, value)
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr);
        assert!(err.contains(expect), "{err}");
        assert!(
            !err.contains(PASSWORD) && !err.contains(PASSWORD_ENCODED),
            "{err}"
        );
    }
}

#[test]
fn dry_run_shows_mongo_with_the_password_masked() {
    let m = Mongo::with_shop();
    let out = m
        .backup("dry-run-bucket")
        .env("MONGO_DB_NAME", "shop,inventory")
        .arg("--dry-run")
        .assert()
        .success();
    let plan: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let targets = plan["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(
        targets[0]["connection"],
        format!(
            "mongodb://backup:***@127.0.0.1:{}/?authSource=admin",
            m.server.port
        )
    );
    assert!(targets[1]["key"]
        .as_str()
        .unwrap()
        .contains("_MONGO/inventory_"));
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains(PASSWORD_ENCODED));

    // Without MONGO_DB_NAME: one artifact of everything the URI selects, as the old script.
    let out = m
        .backup("dry-run-bucket")
        .env_remove("MONGO_DB_NAME")
        .arg("--dry-run")
        .assert()
        .success();
    let plan: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let targets = plan["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1);
    assert!(targets[0]["key"].as_str().unwrap().contains("_MONGO/all_"));
}
