//! Faults: a hung dump hits its timeout, SIGTERM (what ECS sends before SIGKILL) stops the run
//! quickly; both kill the dump tool and abort the multipart upload.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

fn pid_alive(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

fn hanging_env(pg: &Pg, bucket: &str, pid_file: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("PG_DB_HOST", "127.0.0.1".into()),
        ("PG_DB_PORT", pg.port.to_string()),
        ("PG_DB_USER", "app".into()),
        ("PG_DB_PASSWORD", "pw-1234".into()),
        ("PG_DB_NAME", "app".into()),
        ("S3_BUCKET", bucket.into()),
        ("STAGE", "prod".into()),
        ("PG_COMPRESSION", "none".into()),
        ("BACKHAUL_PART_SIZE_MIB", "5".into()),
        (
            "PG_DUMP_PATH",
            tests_dir()
                .join("fixtures/pg_dump_hangs")
                .display()
                .to_string(),
        ),
        ("REAL_PG_DUMP", pg.bin.join("pg_dump").display().to_string()),
        // Two full parts are in flight when it hangs: the multipart upload exists.
        ("HANG_AFTER_BYTES", "12000000".into()),
        ("PID_FILE", pid_file.display().to_string()),
    ]
}

fn cluster() -> Pg {
    let pg = Pg::start();
    pg.create_user("app", "pw-1234");
    pg.create_db("app");
    pg
}

#[test]
fn hung_dump_is_killed_at_the_timeout() {
    let pg = cluster();
    let bucket = moto().bucket("timeout");
    let pid_file = pg.dir.path().join("dump.pid");
    let out = backhaul_moto()
        .envs(hanging_env(&pg, &bucket, &pid_file))
        // Long enough for the stand-in to write its bytes and pid even on a loaded machine.
        .env("BACKUP_TIMEOUT", "10s")
        .arg("backup")
        .assert()
        .code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "failed");
    assert_eq!(line["error"], "timed out after 10s");
    assert!(!pid_alive(&pid_file), "the hung pg_dump was killed");
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
    assert_eq!(moto().multipart_uploads(&bucket), 0);
}

/// The signal lands after S3 created the multipart upload but before its answer (the upload
/// id) reached backhaul: the upload exists all the same, and is aborted once the answer comes.
#[test]
fn signal_before_the_upload_id_arrives_still_aborts_the_upload() {
    let pg = cluster();
    let bucket = moto().bucket("sigcreate");
    let pid_file = pg.dir.path().join("dump.pid");
    let held = Fault::DelayAnswer {
        first: 1,
        by: Duration::from_secs(3),
    };
    let proxy = FaultProxy::start(&moto().endpoint, vec![Rule::new("POST", "uploads", held)]);
    let mut child = backhaul_std()
        .envs(hanging_env(&pg, &bucket, &pid_file))
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto().multipart_uploads(&bucket) == 0 {
        assert!(
            Instant::now() < deadline,
            "the multipart upload was never created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.hits(0), 1, "its answer is still held");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
    assert_eq!(
        moto().multipart_uploads(&bucket),
        0,
        "the multipart upload was aborted"
    );
}

/// ECS sends SIGTERM (then SIGKILL after stopTimeout); a terminal sends SIGINT. Either way the
/// dump stops, the multipart upload is aborted and the exit code says which signal. (main caps
/// the shutdown at 30 s itself; no timing is asserted here.)
fn signal_aborts_everything(signal: i32, hint: &str) {
    let pg = cluster();
    let bucket = moto().bucket(hint);
    let pid_file = pg.dir.path().join("dump.pid");
    // Kept for the failure message: it holds backhaul's warnings (an abort that failed).
    let log = pg.dir.path().join("backhaul.log");
    let mut child = backhaul_std()
        .envs(hanging_env(&pg, &bucket, &pid_file))
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "dump never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the first parts reach S3 so there is a multipart upload to abort.
    while moto().multipart_uploads(&bucket) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        moto().multipart_uploads(&bucket),
        1,
        "a multipart upload is in progress"
    );
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + signal));
    assert!(!pid_alive(&pid_file), "pg_dump was stopped");
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
    assert_eq!(
        moto().multipart_uploads(&bucket),
        0,
        "the multipart upload was aborted; backhaul's stderr:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn sigterm_aborts_everything_and_exits_143() {
    signal_aborts_everything(libc::SIGTERM, "sigterm");
}

#[test]
fn sigint_aborts_everything_and_exits_130() {
    signal_aborts_everything(libc::SIGINT, "sigint");
}

/// A signal while parts are on the wire: backhaul cancels them on its side, but S3 is still
/// handling them when the abort arrives. moto then fails the abort with a 500 (its abort
/// iterates the upload's parts while the part request adds one: "dictionary changed size
/// during iteration", reproduced by tests/emulator/moto_abort_race.py); this was the
/// signal tests' rare leftover upload, with the tests' AWS_MAX_ATTEMPTS=1. The failed abort
/// is answered here by the proxy, deterministically: the abort is sent again, and ListParts
/// confirms the upload is gone.
#[test]
fn a_failed_abort_is_sent_again_and_confirmed() {
    let (status, proxy, bucket, stderr) = signal_through(
        "abortfail",
        vec![
            Rule::new("DELETE", "uploadId", Fault::SlowDown(1)),
            Rule::new("GET", "uploadId", Fault::Pass),
        ],
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    // At least: a part still landing in moto can fail one more abort (see above).
    assert!(
        proxy.hits(0) >= 2,
        "the failed abort, then one that worked: {stderr}"
    );
    assert!(
        proxy.hits(1) >= 1,
        "ListParts confirmed the abort: {stderr}"
    );
    assert_eq!(moto().multipart_uploads(&bucket), 0, "{stderr}");
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
}

/// AWS: "if any part uploads are currently in progress, those part uploads might or might
/// not succeed. As a result, it might be necessary to abort a given multipart upload
/// multiple times" (AbortMultipartUpload). An abort answered 204 while the upload is still
/// there (the proxy answers the first one without forwarding it) is caught by ListParts and
/// sent again.
#[test]
fn an_abort_that_left_the_upload_is_repeated() {
    let (status, proxy, bucket, stderr) = signal_through(
        "abortagain",
        vec![
            Rule::new("DELETE", "uploadId", Fault::NotForwarded(1)),
            Rule::new("GET", "uploadId", Fault::Pass),
        ],
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        proxy.hits(0) >= 2,
        "answered but not done, then done: {stderr}"
    );
    assert!(proxy.hits(1) >= 2, "still listed, then gone: {stderr}");
    assert_eq!(moto().multipart_uploads(&bucket), 0, "{stderr}");
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
}

/// A hanging backup through a fault proxy with `rules`, stopped by SIGTERM once its multipart
/// upload exists: its exit status, the proxy, the bucket and backhaul's debug log.
fn signal_through(
    hint: &str,
    rules: Vec<Rule>,
) -> (std::process::ExitStatus, FaultProxy, String, String) {
    signal_through_when(hint, rules, |bucket| moto().multipart_uploads(bucket) > 0)
}

/// [`signal_through`], the SIGTERM sent once `ready(bucket)` holds.
fn signal_through_when(
    hint: &str,
    rules: Vec<Rule>,
    ready: impl Fn(&str) -> bool,
) -> (std::process::ExitStatus, FaultProxy, String, String) {
    let pg = cluster();
    let bucket = moto().bucket(hint);
    let pid_file = pg.dir.path().join("dump.pid");
    let log = pg.dir.path().join("backhaul.log");
    let proxy = FaultProxy::start(&moto().endpoint, rules);
    let mut child = backhaul_std()
        .envs(hanging_env(&pg, &bucket, &pid_file))
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("BACKHAUL_LOG", "backhaul=debug")
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&bucket) {
        assert!(Instant::now() < deadline, "never ready for the signal");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    (status, proxy, bucket, stderr)
}

/// S3 slow to answer the abort: the first AbortMultipartUpload reaches S3 only after main's
/// 30 s shutdown grace ran out and the command was dropped midway through its abort. The
/// upload must not be forgotten then: the dropped upload still knows its id and hands the
/// abort on (main waits for it before exiting). An abort that took its id before S3 answered
/// left the upload behind in exactly this case.
#[test]
fn abort_cut_short_by_the_shutdown_grace_is_handed_on() {
    // Longer than the grace: without the hand-on, the upload is still there when backhaul exits.
    let stalled = Fault::Delay {
        first: 1,
        by: Duration::from_secs(90),
    };
    let (status, proxy, bucket, stderr) = signal_through_when(
        "slowabort",
        vec![Rule::new("DELETE", "uploadId", stalled)],
        |bucket| moto().multipart_parts(bucket) > 0,
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert_eq!(
        proxy.hits(0),
        2,
        "the stalled abort, then the one handed on: {stderr}"
    );
    assert_eq!(
        moto().multipart_uploads(&bucket),
        0,
        "the multipart upload was aborted; backhaul's stderr:\n{stderr}"
    );
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
}
