//! S3 misbehaving under a multipart backup, through [`FaultProxy`] in front of moto:
//! throttling is retried and the backup succeeds; persistent errors and lost completions fail
//! the backup and leave neither an object nor an open multipart upload; an unreachable
//! endpoint fails cleanly before pg_dump starts.

use std::time::{Duration, Instant};

use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

const PASSWORD: &str = "pw-faults";

const UPLOAD_PART: (&str, &str) = ("PUT", "partNumber=");
const COMPLETE: (&str, &str) = ("POST", "uploadId=");
const ABORT: (&str, &str) = ("DELETE", "uploadId=");

fn rule((method, query): (&'static str, &'static str), fault: Fault) -> Rule {
    Rule::new(method, query, fault)
}

/// A cluster whose `big` database dumps to ~24 MB of incompressible bytes: with 5 MiB parts
/// and no compression, several parts.
fn big_cluster() -> Pg {
    let pg = Pg::start();
    pg.create_user("app", PASSWORD);
    pg.create_db("big");
    pg.psql("big", "create table blobs as select g as id, decode(string_agg(md5(g::text || '-' || i), ''), 'hex') as b from generate_series(1, 1500) g, generate_series(1, 1000) i group by g");
    pg
}

/// `backhaul backup` of `big` into `bucket` through `endpoint`.
fn backup_via(pg: &Pg, bucket: &str, endpoint: &str, attempts: u32) -> assert_cmd::Command {
    let mut cmd = backhaul();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, "app", PASSWORD, "big");
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("S3_FORCE_PATH_STYLE", "true")
        .env("AWS_MAX_ATTEMPTS", attempts.to_string())
        .env("S3_BUCKET", bucket)
        .env("STAGE", "prod")
        .env("PG_COMPRESSION", "none")
        .env("BACKHAUL_PART_SIZE_MIB", "5");
    cmd
}

fn failed_summary(out: &assert_cmd::assert::Assert) -> serde_json::Value {
    let lines = summaries(&out.get_output().stdout);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "failed");
    lines[0].clone()
}

/// Nothing left in the bucket, checked against moto directly (not through the proxy).
fn assert_nothing_left(bucket: &str) {
    assert_eq!(moto().keys(bucket), Vec::<String>::new());
    assert_eq!(
        moto().multipart_uploads(bucket),
        0,
        "no dangling multipart upload"
    );
}

#[test]
fn throttled_part_uploads_are_retried() {
    let pg = big_cluster();
    let bucket = moto().bucket("slowdown");
    let proxy = FaultProxy::start(
        &moto().endpoint,
        vec![rule(UPLOAD_PART, Fault::SlowDown(2))],
    );
    let out = backup_via(&pg, &bucket, &proxy.endpoint(), 4)
        .assert()
        .success();
    let line = &summaries(&out.get_output().stdout)[0];
    let key = line["key"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
    let parts = manifest["parts"].as_u64().unwrap() as usize;
    assert!(parts >= 4, "{manifest}");
    assert_eq!(manifest["sha256"], sha256_hex(&moto().get(&bucket, key)));
    assert_eq!(
        proxy.hits(0),
        parts + 2,
        "every part once, plus the two throttled attempts again"
    );
    assert_eq!(moto().multipart_uploads(&bucket), 0);
}

#[test]
fn stalled_part_upload_times_out_and_is_retried() {
    let pg = big_cluster();
    let bucket = moto().bucket("stall");
    // The first part upload gets no answer for far longer than the attempt timeout.
    let stall = Fault::Delay {
        first: 1,
        by: Duration::from_secs(60),
    };
    let proxy = FaultProxy::start(&moto().endpoint, vec![rule(UPLOAD_PART, stall)]);
    let out = backup_via(&pg, &bucket, &proxy.endpoint(), 3)
        .env("BACKHAUL_S3_ATTEMPT_TIMEOUT", "3s")
        .assert()
        .success();
    let line = &summaries(&out.get_output().stdout)[0];
    let key = line["key"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
    let parts = manifest["parts"].as_u64().unwrap() as usize;
    assert_eq!(manifest["sha256"], sha256_hex(&moto().get(&bucket, key)));
    assert_eq!(
        proxy.hits(0),
        parts + 1,
        "the stalled attempt was given up and retried"
    );
}

#[test]
fn invalid_attempt_timeout_is_a_config_error() {
    let out = backhaul()
        .args(["backup", "--pg-url", "postgresql://u@127.0.0.1:9/d"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("S3_BUCKET", "unused")
        .env("STAGE", "prod")
        .env("BACKHAUL_S3_ATTEMPT_TIMEOUT", "soon")
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("BACKHAUL_S3_ATTEMPT_TIMEOUT"), "{err}");
}

#[test]
fn persistent_part_errors_fail_and_abort() {
    let pg = big_cluster();
    let bucket = moto().bucket("internal");
    let proxy = FaultProxy::start(
        &moto().endpoint,
        vec![
            rule(UPLOAD_PART, Fault::InternalError),
            rule(ABORT, Fault::Pass),
        ],
    );
    let out = backup_via(&pg, &bucket, &proxy.endpoint(), 2)
        .assert()
        .code(1);
    let line = failed_summary(&out);
    assert!(
        line["error"].as_str().unwrap().contains("upload part"),
        "{line}"
    );
    assert!(proxy.hits(0) >= 2, "the failing part was retried");
    assert_eq!(proxy.hits(1), 1, "the multipart upload was aborted");
    assert_nothing_left(&bucket);
}

#[test]
fn lost_completion_fails_and_leaves_nothing() {
    let pg = big_cluster();
    let bucket = moto().bucket("complete");
    let proxy = FaultProxy::start(
        &moto().endpoint,
        vec![rule(COMPLETE, Fault::Drop), rule(ABORT, Fault::Pass)],
    );
    let out = backup_via(&pg, &bucket, &proxy.endpoint(), 2)
        .assert()
        .code(1);
    let line = failed_summary(&out);
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("complete multipart upload"),
        "{line}"
    );
    assert_eq!(
        proxy.hits(0),
        2,
        "completion attempted AWS_MAX_ATTEMPTS times"
    );
    assert_eq!(proxy.hits(1), 1, "the multipart upload was aborted");
    assert_nothing_left(&bucket);
}

#[test]
fn unreachable_s3_fails_and_stops_pg_dump() {
    let pg = big_cluster();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = backup_via(&pg, "nowhere", &closed, 2).assert().code(1);
    // The destination check finds it before pg_dump starts: no artifact line, one error line.
    assert!(summaries(&out.get_output().stdout).is_empty());
    let stderr = String::from_utf8_lossy(&out.get_output().stderr);
    let error = stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: bucket \"nowhere\" cannot be reached: ")
            && error.contains(": ConnectionFailed: "),
        "{stderr}"
    );
    assert_no_pg_dump_session(&pg);
}

/// pg_dump's session ends once the process is gone; the backend notices within moments.
fn assert_no_pg_dump_session(pg: &Pg) {
    let sql = "select count(*) from pg_stat_activity where application_name = 'pg_dump'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("postgres", sql) != "0" {
        assert!(Instant::now() < deadline, "pg_dump is still connected");
        std::thread::sleep(Duration::from_millis(100));
    }
}
