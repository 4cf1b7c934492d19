//! S3 Object Lock against moto: `backup --lock-days` retains what it writes, `prune` keeps
//! (and reports) pairs whose artifact or manifest is still retained, `status` and `verify`
//! show the lock.
//!
//! moto applies ObjectLockMode/RetainUntilDate on PutObject and refuses to delete a locked
//! version (AccessDenied), but ignores them on CreateMultipartUpload: multipart uploads (objects
//! over one part) are not covered here.

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::ObjectLockMode;

use crate::common::contract::Contract;
use crate::common::*;

fn put(bucket: &str, key: &str, body: Vec<u8>, lock: bool) {
    let mut req = moto()
        .s3()
        .put_object()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .body(ByteStream::from(body));
    if lock {
        let until = chrono::Utc::now() + chrono::Duration::days(1);
        req = req
            .object_lock_mode(ObjectLockMode::Governance)
            .object_lock_retain_until_date(DateTime::from_secs(until.timestamp()));
    }
    block_on(req.send()).unwrap();
}

fn manifest(stage: &str, key: &str, ts: &str, body: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": 1, "tool": "backhaul", "tool_version": "test", "kind": "postgres",
        "stage": stage, "database": "app", "key": key, "timestamp": ts, "timezone": "UTC",
        "started_at": "2024-01-01T02:00:00Z", "finished_at": "2024-01-01T02:00:01Z",
        "compression": "zstd", "raw_bytes": body.len(), "stored_bytes": body.len(),
        "sha256": sha256_hex(body), "parts": 1,
        "source": {"dump_tool": "pg_dump", "dump_tool_version": "15", "host": "db"},
    }))
    .unwrap()
}

#[test]
fn prune_keeps_locked_pairs_whole_and_reports_them() {
    let bucket = moto().locked_bucket("prune");
    let stage = "lk";
    // (day, artifact locked, manifest locked)
    let backups = [
        (1, true, false),
        (2, false, true),
        (3, false, false),
        (4, false, false),
    ];
    let mut keys = Vec::new();
    for (day, lock_art, lock_man) in backups {
        let ts = format!("2024-01-0{day}_02h00m00s");
        let key = format!("{stage}/{ts}_PGSQL/backup_{stage}_app_{ts}.dump.zst");
        let body = format!("dump {day}").into_bytes();
        put(
            &bucket,
            &format!("{key}.manifest.json"),
            manifest(stage, &key, &ts, &body),
            lock_man,
        );
        put(&bucket, &key, body, lock_art);
        keys.push(key);
    }
    let rec = Contract::start();
    let out = rec
        .backhaul()
        .args([
            "prune",
            "--stage",
            stage,
            "--bucket",
            &bucket,
            "--keep-last",
            "1",
        ])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let line = |k: &str| {
        text.lines()
            .find(|l| l.contains(k))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line(&keys[0]).starts_with(&format!(
            "locked {} (no keep rule matched; kept: artifact GOVERNANCE until ",
            keys[0]
        )),
        "{text}"
    );
    assert!(
        line(&keys[1]).starts_with(&format!(
            "locked {} (no keep rule matched; kept: manifest GOVERNANCE until ",
            keys[1]
        )),
        "{text}"
    );
    assert!(
        line(&keys[2]).starts_with(&format!("delete {}", keys[2])),
        "{text}"
    );
    assert!(
        line(&keys[3]).starts_with(&format!("keep {}", keys[3])),
        "{text}"
    );

    let mut left = moto().keys(&bucket);
    left.sort();
    let mut want: Vec<String> = [&keys[0], &keys[1], &keys[3]]
        .iter()
        .flat_map(|k| [k.to_string(), format!("{k}.manifest.json")])
        .collect();
    want.sort();
    assert_eq!(
        left, want,
        "locked pairs kept whole, the unlocked old pair deleted whole"
    );

    // status shows which recent backups are locked.
    let out = rec
        .backhaul()
        .args(["status", "--stage", stage, "--bucket", &bucket, "--json"])
        .assert()
        .success();
    let st: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let locked = st["locked"].as_object().unwrap();
    assert_eq!(locked.keys().collect::<Vec<_>>(), [&keys[0]], "{st}");
    assert!(locked[&keys[0]]
        .as_str()
        .unwrap()
        .starts_with("GOVERNANCE until "));
    rec.check(&[
        "s3:ListObjectsV2",
        "s3:HeadObject",
        "s3:DeleteObjects",
        "s3:GetObject",
    ]);
}

#[test]
fn backup_lock_days_retains_artifact_and_manifest() {
    let pg = Pg::start();
    pg.create_user("app", "pw");
    pg.create_db("app");
    pg.psql("app", "create table t (i int); insert into t values (1);");
    let bucket = moto().locked_bucket("backup");
    let rec = Contract::start();
    let mut cmd = rec.backhaul();
    cmd.arg("backup");
    pg_env(&mut cmd, &pg, "app", "pw", "app");
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "lk")
        .env("BACKUP_LOCK_DAYS", "2")
        .env("BACKUP_LOCK_MODE", "compliance");
    let out = cmd.assert().success();
    let key = summaries(&out.get_output().stdout)[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    for k in [key.clone(), format!("{key}.manifest.json")] {
        let h = block_on(moto().s3().head_object().bucket(&bucket).key(&k).send()).unwrap();
        assert_eq!(
            h.object_lock_mode(),
            Some(&ObjectLockMode::Compliance),
            "{k}"
        );
        let until = h.object_lock_retain_until_date().unwrap().secs();
        let days = (until - chrono::Utc::now().timestamp()) as f64 / 86400.0;
        assert!(days > 1.9 && days <= 2.0, "{k}: {days}");
        // The version cannot be deleted.
        let v = h.version_id().unwrap().to_string();
        let err = block_on(
            moto()
                .s3()
                .delete_object()
                .bucket(&bucket)
                .key(&k)
                .version_id(v)
                .send(),
        );
        assert!(err.is_err(), "{k}");
    }
    // verify says the artifact is locked.
    let out = rec
        .backhaul()
        .args(["verify", &key, "--stage", "lk", "--bucket", &bucket])
        .assert()
        .success();
    let line = &summaries(&out.get_output().stdout)[0];
    assert!(
        line["locked"]
            .as_str()
            .unwrap()
            .starts_with("COMPLIANCE until "),
        "{line}"
    );
    // list --locks shows the lock of the artifact (and plain list sends no HEAD at all).
    let out = rec
        .backhaul()
        .args([
            "list", "--stage", "lk", "--bucket", &bucket, "--json", "--locks",
        ])
        .assert()
        .success();
    let rows = summaries(&out.get_output().stdout);
    let row = rows
        .iter()
        .find(|r| r["key"] == key.as_str())
        .expect("listed");
    assert!(
        row["lock"]
            .as_str()
            .unwrap()
            .starts_with("COMPLIANCE until "),
        "{row}"
    );
    let out = rec
        .backhaul()
        .args(["list", "--stage", "lk", "--bucket", &bucket])
        .assert()
        .success();
    let table = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(!table.contains("LOCK"), "{table}");
    rec.check(&["s3:PutObject", "s3:HeadObject"]);

    // Object Lock is S3 only; a bad mode is refused up front.
    let mut cmd = backhaul();
    cmd.args([
        "backup",
        "--stage",
        "lk",
        "--dest",
        "file:///tmp/x",
        "--lock-days",
        "1",
    ]);
    let err = cmd.assert().code(2).get_output().stderr.clone();
    assert!(String::from_utf8_lossy(&err).contains("--lock-days needs an S3 destination"));
    let mut cmd = backhaul();
    cmd.args([
        "backup",
        "--stage",
        "lk",
        "--bucket",
        "acme-backups",
        "--lock-days",
        "1",
        "--lock-mode",
        "forever",
    ]);
    let err = cmd.assert().code(2).get_output().stderr.clone();
    assert!(String::from_utf8_lossy(&err).contains("\"forever\" is not GOVERNANCE or COMPLIANCE"));
}

/// Why (issue 26): on an Object Lock bucket `verify` wrote the manifest's new current version
/// without retention (the old version stayed locked, the current one did not). Now the
/// verdict's version carries the same mode and retain-until date.
#[test]
fn verify_keeps_a_locked_manifest_locked() {
    let bucket = moto().locked_bucket("verify");
    let stage = "lv";
    let ts = "2024-01-01_02h00m00s";
    let key = format!("{stage}/{ts}_PGSQL/backup_{stage}_app_{ts}.dump.zst");
    let body = b"not a dump".to_vec();
    let mkey = format!("{key}.manifest.json");
    put(&bucket, &mkey, manifest(stage, &key, ts, &body), true);
    put(&bucket, &key, body, true);
    let head = |k: &str| block_on(moto().s3().head_object().bucket(&bucket).key(k).send()).unwrap();
    let before = head(&mkey);
    // The object is not a zstd stream: verification fails, and that verdict is recorded.
    // Through the contract checker: the verdict's PutObject carries lock fields of its own.
    let rec = Contract::start();
    rec.backhaul()
        .args(["verify", &key, "--stage", stage, "--bucket", &bucket])
        .assert()
        .code(1);
    rec.check(&["s3:PutObject"]);
    let after = head(&mkey);
    assert_ne!(
        after.version_id(),
        before.version_id(),
        "a new version was written"
    );
    assert_eq!(after.object_lock_mode(), Some(&ObjectLockMode::Governance));
    assert_eq!(
        after.object_lock_retain_until_date().map(|d| d.secs()),
        before.object_lock_retain_until_date().map(|d| d.secs())
    );
    let m: serde_json::Value = serde_json::from_slice(&moto().get(&bucket, &mkey)).unwrap();
    assert_eq!(m["verification"]["ok"], false, "{m}");
}
