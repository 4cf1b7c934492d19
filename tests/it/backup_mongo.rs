//! `backhaul backup` for MongoDB against the stand-in mongodump and moto: zip and archive
//! round trips, a URI that never reaches argv or output, PostgreSQL and MongoDB failing
//! independently, and failures that leave nothing behind (no object, no upload, no temp dir).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::*;

const URI: &str = "mongodb://backup:s3cr%40t-pw@mongo.internal:27017/?authSource=admin";
const PASSWORD: &str = "s3cr@t-pw";
const PASSWORD_ENCODED: &str = "s3cr%40t-pw";

fn standins() -> PathBuf {
    tests_dir().join("standins")
}

/// A stand-in server (`<tmp>/server`) holding database `shop`, and an empty work dir.
struct Mongo {
    tmp: TempDir,
}

impl Mongo {
    fn with_shop(large_mb: &str) -> Mongo {
        let tmp = tempfile::Builder::new()
            .prefix("backhaul-mongo-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(tmp.path().join("server")).unwrap();
        std::fs::create_dir(tmp.path().join("work")).unwrap();
        let m = Mongo { tmp };
        m.fixture(&m.server(), "shop", large_mb);
        m
    }

    fn fixture(&self, data: &Path, db: &str, large_mb: &str) {
        let out = Command::new("python3")
            .arg(standins().join("mongo_fixture.py"))
            .arg("--data")
            .arg(data)
            .args(["--db", db, "--large-mb", large_mb])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn server(&self) -> PathBuf {
        self.tmp.path().join("server")
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn path_env() -> String {
        format!(
            "{}:{}",
            standins().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// `backhaul backup` for `shop` into `bucket`, as a team's task definition would set it.
    fn backup(&self, bucket: &str) -> assert_cmd::Command {
        let mut cmd = backhaul_moto();
        cmd.arg("backup")
            .env("PATH", Self::path_env())
            .env("BACKHAUL_STANDIN_MONGO_DATA", self.server())
            .env("BACKHAUL_STANDIN_MONGO_PASSWORD", PASSWORD)
            .env("MONGO_CONNECTION_STRING", URI)
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

/// The files of one database in a stand-in server: `<db>/<name>` → bytes.
fn tree(server: &Path, db: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(server.join(db))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                format!("{db}/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
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
    let m = Mongo::with_shop("3");
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

    let object = moto().get(&bucket, key);
    let expected = tree(&m.server(), "shop");
    assert!(expected.len() >= 14, "fixture has 7 collections");
    assert_eq!(unzip(&object), expected);

    let man = manifest(&bucket, key);
    assert_eq!(man["kind"], "mongo");
    assert_eq!(man["compression"], "zip");
    assert_eq!(man["sha256"], sha256_hex(&object));
    assert_eq!(man["stored_bytes"], object.len() as u64);
    let raw: usize = expected.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(man["raw_bytes"], raw as u64);
    assert_eq!(man["source"]["dump_tool"], "mongodump");
    assert_eq!(man["source"]["dump_tool_version"], "100.9.4");
    assert_eq!(man["source"]["host"], "mongo.internal:27017");
    m.assert_work_dir_empty();

    // Bonus: Info-ZIP agrees the streamed zip (data descriptors, zip64) is sound.
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

/// Writes a mongorestore `--config` the way an operator would: 0600, uri only.
fn restore_config(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("restore.yaml");
    std::fs::write(&p, format!("uri: \"{URI}\"\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn archive_restores_with_mongorestore() {
    let m = Mongo::with_shop("1");
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

    let archive = m.tmp.path().join("shop.archive.gz");
    std::fs::write(&archive, &object).unwrap();
    let restored = m.tmp.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    let st = Command::new(standins().join("mongorestore"))
        .arg("--config")
        .arg(restore_config(m.tmp.path()))
        .arg(format!("--archive={}", archive.display()))
        .arg("--gzip")
        .env("BACKHAUL_STANDIN_MONGO_DATA", &restored)
        .env("BACKHAUL_STANDIN_MONGO_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let cmp = Command::new("python3")
        .arg(standins().join("mongo_fixture.py"))
        .arg("--compare")
        .arg(m.server())
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}

#[test]
fn uri_never_reaches_argv_or_output() {
    for format in ["zip", "archive"] {
        let m = Mongo::with_shop("0.1");
        let bucket = moto().bucket("margv");
        let log = m.tmp.path().join("argv.log");
        let out = m
            .backup(&bucket)
            .env("MONGO_FORMAT", format)
            .env("BACKHAUL_STANDIN_ARGV_LOG", &log)
            .env("BACKHAUL_LOG", "debug")
            .assert()
            .success();
        let calls: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let dumps: Vec<_> = calls.iter().filter(|c| !c["config"].is_null()).collect();
        assert_eq!(dumps.len(), 1, "{calls:?}");
        let dump = dumps[0];
        assert_eq!(dump["config_mode"], "0600", "{dump}");
        assert_eq!(dump["config_keys"], serde_json::json!(["uri"]), "{dump}");
        let config = dump["config"].as_str().unwrap();
        assert!(
            !Path::new(config).exists(),
            "config file {config} left behind"
        );
        let argv = serde_json::to_string(&dump["argv"]).unwrap();
        for text in [
            std::fs::read_to_string(&log).unwrap(),
            argv,
            String::from_utf8_lossy(&out.get_output().stdout).into_owned(),
            String::from_utf8_lossy(&out.get_output().stderr).into_owned(),
        ] {
            assert!(
                !text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED),
                "secret leaked into: {text}"
            );
        }
        let argv_only: Vec<String> = calls
            .iter()
            .flat_map(|c| c["argv"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert!(
            !argv_only.iter().any(|a| a.contains("mongodb://")),
            "{argv_only:?}"
        );
        let key = summaries(&out.get_output().stdout)[0]["key"]
            .as_str()
            .unwrap()
            .to_string();
        let man = String::from_utf8(moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
        assert!(!man.contains(PASSWORD) && !man.contains(PASSWORD_ENCODED));
    }
}

#[test]
fn failing_postgres_does_not_stop_mongo() {
    let m = Mongo::with_shop("0.1");
    let bucket = moto().bucket("mpgfail");
    let out = m
        .backup(&bucket)
        .env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_PORT", free_port().to_string())
        .env("PG_DB_USER", "x")
        .env("PG_DB_PASSWORD", "nope-nope")
        .env("PG_DB_NAME", "y")
        .assert()
        .code(1);
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let status = |kind: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == kind)
            .map(|l| l["status"].clone())
            .unwrap()
    };
    assert_eq!(status("postgres"), "failed");
    assert_eq!(status("mongo"), "ok");
    let keys = moto().keys(&bucket);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.contains("_MONGO/")), "{keys:?}");
    assert_eq!(moto().multipart_uploads(&bucket), 0);
}

#[test]
fn failing_mongo_does_not_stop_postgres() {
    let pg = Pg::start();
    pg.create_user("app", "pg-pass-123");
    pg.create_db("app");
    pg.psql("app", FIXTURE_SQL);
    let m = Mongo::with_shop("0.1");
    let bucket = moto().bucket("mmfail");
    let mut cmd = m.backup(&bucket);
    pg_env(&mut cmd, &pg, "app", "pg-pass-123", "app");
    let out = cmd
        .env("BACKHAUL_STANDIN_FAIL", "Failed: mongo is down")
        .assert()
        .code(1);
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mongo = lines.iter().find(|l| l["kind"] == "mongo").unwrap();
    assert_eq!(mongo["status"], "failed");
    assert!(
        mongo["error"].as_str().unwrap().contains("mongo is down"),
        "{mongo}"
    );
    let pg_line = lines.iter().find(|l| l["kind"] == "postgres").unwrap();
    assert_eq!(pg_line["status"], "ok");
    let keys = moto().keys(&bucket);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.contains("_PGSQL/")), "{keys:?}");
    assert_eq!(moto().multipart_uploads(&bucket), 0);
    m.assert_work_dir_empty();
}

#[test]
fn archive_dump_failing_midway_aborts_the_multipart_upload() {
    // ~9 MB gzipped: the failure comes after the first 5 MiB part is already uploading.
    let m = Mongo::with_shop("25");
    let bucket = moto().bucket("mmidway");
    let mut cmd = m.backup(&bucket);
    cmd.env("MONGO_FORMAT", "archive")
        .env("BACKHAUL_PART_SIZE_MIB", "5")
        .env("BACKHAUL_STANDIN_FAIL_AFTER_BYTES", "6000000");
    assert_failed_cleanly(&mut cmd, &bucket, "connection reset by peer");
}

#[test]
fn zip_dump_failing_midway_leaves_no_temp_dir() {
    let m = Mongo::with_shop("3");
    let bucket = moto().bucket("mzipmid");
    let mut cmd = m.backup(&bucket);
    cmd.env("BACKHAUL_STANDIN_FAIL_AFTER_BYTES", "1000000");
    assert_failed_cleanly(&mut cmd, &bucket, "connection reset by peer");
    m.assert_work_dir_empty();
}

#[test]
fn unknown_database_fails_cleanly() {
    let m = Mongo::with_shop("0.1");
    let bucket = moto().bucket("mnodb");
    let mut cmd = m.backup(&bucket);
    cmd.env("MONGO_DB_NAME", "nope");
    assert_failed_cleanly(&mut cmd, &bucket, "database \"nope\" does not exist");
    m.assert_work_dir_empty();
}

#[test]
fn empty_dump_is_an_error() {
    // Real mongodump exits 0 and writes nothing for a database or collection that is not there.
    let m = Mongo::with_shop("0.1");
    let bucket = moto().bucket("mempty");
    let mut cmd = m.backup(&bucket);
    cmd.arg("--mongodump-arg=--collection=not_there");
    assert_failed_cleanly(
        &mut cmd,
        &bucket,
        "mongodump wrote nothing for database shop",
    );
    m.assert_work_dir_empty();
}

#[test]
fn too_little_free_space_fails_before_dumping() {
    let m = Mongo::with_shop("0.1");
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
    ] {
        let m = Mongo::with_shop("0.1");
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
    let m = Mongo::with_shop("0.1");
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
        "mongodb://backup:***@mongo.internal:27017/?authSource=admin"
    );
    assert!(targets[1]["key"]
        .as_str()
        .unwrap()
        .contains("_MONGO/inventory_"));
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains(PASSWORD_ENCODED));
}
