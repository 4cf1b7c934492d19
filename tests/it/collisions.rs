//! Two runs, one key: two backups of the same target started in the same second derive the
//! same key. S3's conditional create (`If-None-Match: *`) lets exactly one of them write it;
//! the other fails that target cleanly, and the object, its manifest and `verify` all agree
//! on the winner. A lost answer to our own create is not mistaken for a collision.
//!
//! moto enforces `If-None-Match` but by look-then-write (moto/s3/responses.py), so two
//! creates arriving within the same few milliseconds can both pass its check (S3 serialises
//! them). The second run's create therefore goes through a proxy that holds it back a
//! little: both runs still start together and race for the key, but moto sees the creates
//! one after the other, as S3 would order them.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

const PASSWORD: &str = "pw-onekey";

/// `small` dumps to one PutObject; `mid` (~7 MB of incompressible bytes, no compression,
/// 5 MiB parts) to a two-part multipart upload.
pub fn cluster() -> Pg {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("small");
    pg.psql(
        "small",
        "create table t as select g as id, md5(g::text) as v from generate_series(1, 2000) g",
    );
    pg.create_db("mid");
    pg.psql("mid", "create table blobs as select g as id, decode(string_agg(md5(g::text || '-' || i), ''), 'hex') as b from generate_series(1, 450) g, generate_series(1, 1000) i group by g");
    pg
}

/// The environment of a backup of `db` into `bucket` at `endpoint`.
pub fn backup_env(pg: &Pg, bucket: &str, stage: &str, db: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PG_DB_HOST", "127.0.0.1".into()),
        ("PG_DB_PORT", pg.port.to_string()),
        ("PG_DB_USER", "app".into()),
        ("PG_DB_PASSWORD", PASSWORD.into()),
        ("PG_DB_NAME", db.into()),
        ("S3_BUCKET", bucket.into()),
        ("STAGE", stage.into()),
        ("PG_COMPRESSION", "none".into()),
        ("BACKHAUL_PART_SIZE_MIB", "5".into()),
    ]
}

/// Sleeps until just after the next second boundary, so that processes started now compute
/// their (second-resolution) timestamps within the same second.
pub fn start_of_next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(now.subsec_nanos() as u64);
    std::thread::sleep(Duration::from_secs(1) - into + Duration::from_millis(20));
}

fn spawn_backup(env: &[(&'static str, String)], endpoint: &str) -> std::process::Child {
    let mut cmd: Command = backhaul_std();
    cmd.arg("backup")
        .envs(env.iter().cloned())
        .env("AWS_ENDPOINT_URL", endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn one_line(out: &Output) -> serde_json::Value {
    let lines = summaries(&out.stdout);
    assert_eq!(
        lines.len(),
        1,
        "{lines:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines[0].clone()
}

/// Starts two backups of `db` together until a pair collides on the key (a pair that
/// straddles a second boundary does not, and is retried), and checks the outcome. `create`
/// is the request that creates the artifact; the second run's is held back 2 s.
fn two_runs_one_key(db: &str, create: (&'static str, &'static str), hint: &str) {
    let pg = cluster();
    let bucket = moto().bucket(hint);
    let env = backup_env(&pg, &bucket, "prod", db);
    for _attempt in 0..5 {
        let (method, query) = create;
        let hold = Fault::Delay {
            first: 1,
            by: Duration::from_secs(2),
        };
        let proxy = FaultProxy::start(&moto().endpoint, vec![Rule::new(method, query, hold)]);
        start_of_next_second();
        let (a, b) = (
            spawn_backup(&env, &moto().endpoint),
            spawn_backup(&env, &proxy.endpoint()),
        );
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let (la, lb) = (one_line(&a), one_line(&b));
        if la["key"] != lb["key"] {
            // Different seconds: both are ordinary backups.
            assert!(a.status.success() && b.status.success(), "{la} {lb}");
            continue;
        }
        let key = la["key"].as_str().unwrap().to_string();
        let mut runs = [(a, la), (b, lb)];
        runs.sort_by_key(|(o, _)| !o.status.success());
        let [(won, wl), (lost, ll)] = runs;
        assert_eq!(
            (won.status.code(), lost.status.code()),
            (Some(0), Some(1)),
            "exactly one run wrote the key: {wl} {ll}"
        );
        assert_eq!(
            (&wl["status"], &ll["status"]),
            (&"ok".into(), &"failed".into())
        );
        let error = ll["error"].as_str().unwrap();
        assert!(error.contains("already exists"), "{error}");
        assert!(error.contains(&key), "the error names the key: {error}");

        // The object is the winner's, and so is the manifest beside it.
        let body = moto().get(&bucket, &key);
        assert_eq!(sha256_hex(&body), wl["sha256"].as_str().unwrap());
        let manifest: serde_json::Value =
            serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
        assert_eq!(manifest["sha256"], wl["sha256"]);
        let etag = block_on(moto().s3().head_object().bucket(&bucket).key(&key).send())
            .unwrap()
            .e_tag()
            .map(str::to_string);
        assert_eq!(manifest["etag"].as_str(), etag.as_deref(), "{manifest}");
        assert_eq!(
            moto().keys(&bucket),
            vec![key.clone(), format!("{key}.manifest.json")]
        );
        assert_eq!(moto().multipart_uploads(&bucket), 0, "the loser aborted");
        backhaul_moto()
            .env("S3_BUCKET", &bucket)
            .env("STAGE", "prod")
            .args(["verify", &key])
            .assert()
            .success();
        return;
    }
    panic!("five pairs of simultaneous runs never shared a second");
}

#[test]
fn same_second_backups_one_put_object_wins() {
    two_runs_one_key("small", ("PUT", "x-id=PutObject"), "onekey-put");
}

#[test]
fn same_second_backups_one_multipart_completion_wins() {
    two_runs_one_key("mid", ("POST", "uploadId="), "onekey-mpu");
}

/// A create whose answer is lost is retried by the SDK and refused (the key now exists):
/// the object is our own (its owner metadata says so), so the backup succeeds and verifies.
fn lost_answer_is_our_own_object(db: &str, rule: Rule, hint: &str) {
    let pg = cluster();
    let bucket = moto().bucket(hint);
    let proxy = FaultProxy::start(&moto().endpoint, vec![rule]);
    let out = backhaul()
        .arg("backup")
        .envs(backup_env(&pg, &bucket, "prod", db))
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("S3_FORCE_PATH_STYLE", "true")
        .env("AWS_MAX_ATTEMPTS", "3")
        .assert()
        .success();
    let line = one_line(out.get_output());
    assert!(proxy.hits(0) >= 2, "the create was retried");
    let key = line["key"].as_str().unwrap();
    assert_eq!(sha256_hex(&moto().get(&bucket, key)), line["sha256"]);
    assert_eq!(moto().multipart_uploads(&bucket), 0);
    backhaul_moto()
        .env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .args(["verify", key])
        .assert()
        .success();
}

#[test]
fn lost_put_object_answer_is_recognised_as_ours() {
    lost_answer_is_our_own_object(
        "small",
        Rule::new("PUT", "x-id=PutObject", Fault::DropResponse(1)),
        "onekey-lostput",
    );
}

#[test]
fn lost_completion_answer_is_recognised_as_ours() {
    lost_answer_is_our_own_object(
        "mid",
        Rule::new("POST", "uploadId=", Fault::DropResponse(1)),
        "onekey-lostmpu",
    );
}

/// A manifest that does not describe the object beside it fails `verify`, even when the
/// bytes are identical (same checksum, same MD5 ETag): on a versioned bucket the rewrite is
/// a new version, which the manifest's recorded version id tells apart.
#[test]
fn verify_rejects_a_manifest_for_another_object() {
    let pg = cluster();
    let bucket = moto().bucket("onekey-etag");
    block_on(
        moto()
            .s3()
            .put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let out = backhaul_moto()
        .arg("backup")
        .envs(backup_env(&pg, &bucket, "prod", "small"))
        .assert()
        .success();
    let line = one_line(out.get_output());
    let key = line["key"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
    assert!(manifest["version_id"].is_string(), "{manifest}");
    let verify = || {
        backhaul_moto()
            .env("S3_BUCKET", &bucket)
            .env("STAGE", "prod")
            .args(["verify", key])
            .assert()
    };
    verify().success();
    // Another writer (not backhaul: it would be refused) writes the same bytes again.
    moto().put(&bucket, key, moto().get(&bucket, key));
    let out = verify().code(1);
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines[0]["details"]["checksum"], "ok", "{lines:?}");
    assert_eq!(lines[0]["details"]["object"], "mismatch", "{lines:?}");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not the one its manifest describes"),
        "{lines:?}"
    );
}
