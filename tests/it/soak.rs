//! Soak: backups back to back through a proxy injecting random faults (503 SlowDown, 500s,
//! dropped connections, lost answers; seeded), some through a persistently failing
//! CompleteMultipartUpload, and two runs SIGKILLed mid-upload. Afterwards every key a run
//! reported ok verifies, the bucket holds exactly those artifacts with their manifests (no
//! manifest without its object or the reverse), exit codes match the summaries, and `status`
//! reports the leftovers that `prune --abort-incomplete-older-than` then removes.
//!
//! Meanwhile `prune --keep-last 4` runs over and over, and every PutObject (small artifacts,
//! every manifest) is held back half a second, so prunes see objects whose manifest is still
//! on its way (issue 26). Afterwards every ok key a prune did not report deleting verifies,
//! and no manifest lacks its object.
//!
//! Bounded: ~24 runs of two small targets on loopback, about a minute of backups.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::collisions::{backup_env, cluster, start_of_next_second};
use crate::common::proxy::{Chaos, Fault, FaultProxy, Rule};
use crate::common::*;

const RUNS: usize = 24;
/// These runs are SIGKILLed once their multipart upload exists.
const KILLED: [usize; 2] = [7, 16];
/// Every 6th run completes multipart uploads through a persistent 500: its `mid` target
/// fails (and aborts), its `small` target succeeds.
fn doomed(i: usize) -> bool {
    i % 6 == 5
}
const SEED: u64 = 0x5eed_0018;
const FAULT_PERCENT: u64 = 10;
const STAGE: &str = "soak";

#[derive(Debug, Default)]
struct Figures {
    runs: usize,
    runs_ok: usize,
    runs_failed: usize,
    killed: usize,
    targets_ok: usize,
    targets_failed: usize,
    leftovers_found: usize,
    leftovers_cleaned: usize,
    prunes: usize,
    pruned: usize,
    manifest_gaps_seen: usize,
}

/// Runs `prune --keep-last 4` (default grace) back to back until stopped; returns every
/// key a prune reported deleting, how many prunes ran, and how many times one found an
/// object whose manifest was still on its way (and left it alone).
fn prune_loop(
    bucket: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(BTreeSet<String>, usize, usize)> {
    std::thread::spawn(move || {
        let (mut deleted, mut runs, mut gaps) = (BTreeSet::new(), 0, 0);
        while !stop.load(Ordering::SeqCst) {
            let out = store_cmd(&bucket)
                .args(["prune", "--keep-last", "4"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "prune: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for l in text.lines() {
                if l.contains("(no manifest, younger than the grace period") {
                    gaps += 1;
                }
                if let Some(rest) = l.strip_prefix("delete ") {
                    deleted.insert(rest.split(' ').next().unwrap().to_string());
                }
            }
            runs += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        (deleted, runs, gaps)
    })
}

fn store_cmd(bucket: &str) -> assert_cmd::Command {
    let mut cmd = backhaul_moto();
    cmd.env("S3_BUCKET", bucket).env("STAGE", STAGE);
    cmd
}

/// Starts a backup whose pg_dump hangs after two parts' worth of bytes, waits for its
/// multipart upload to hold a part, and SIGKILLs it: what an OOM kill or a lost Fargate host
/// does. (The upload exists before its first part does: killing at once would leave an empty
/// upload, a different leftover.)
fn kill_mid_upload(pg: &Pg, bucket: &str, run: usize) {
    let pid_file = pg.dir.path().join(format!("dump-{run}.pid"));
    let before = moto().multipart_uploads(bucket);
    let parts_before = moto().multipart_parts(bucket);
    let mut child = backhaul_std()
        .arg("backup")
        .envs(backup_env(pg, bucket, STAGE, "mid"))
        .env(
            "PG_DUMP_PATH",
            tests_dir()
                .join("fixtures/pg_dump_hangs")
                .display()
                .to_string(),
        )
        .env("REAL_PG_DUMP", pg.bin.join("pg_dump").display().to_string())
        .env("HANG_AFTER_BYTES", "12000000")
        .env("PID_FILE", pid_file.display().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto().multipart_uploads(bucket) == before
        || moto().multipart_parts(bucket) == parts_before
    {
        assert!(
            Instant::now() < deadline,
            "the killed run never started uploading"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // The stand-in pg_dump outlives a SIGKILLed parent (as a real one would, briefly).
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        unsafe {
            libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL);
        }
    }
}

#[test]
fn soak_backups_through_random_faults_and_kills() {
    let started = Instant::now();
    let pg = cluster();
    let bucket = moto().bucket("soak");
    let chaos = Chaos {
        seed: SEED,
        percent: FAULT_PERCENT,
    };
    // Every PutObject (small artifacts, manifests) held back: a gap between an object and
    // its manifest, for the concurrent prunes to fall into.
    let delayed = Rule::new(
        "PUT",
        "x-id=PutObject",
        Fault::Delay {
            first: usize::MAX,
            by: Duration::from_millis(500),
        },
    );
    let flaky = FaultProxy::start_chaos(&moto().endpoint, vec![delayed], chaos);
    let failing = FaultProxy::start_chaos(
        &moto().endpoint,
        vec![Rule::new(
            "POST",
            "uploadId=",
            crate::common::proxy::Fault::InternalError,
        )],
        Chaos {
            seed: SEED ^ 1,
            ..chaos
        },
    );
    let mut fig = Figures::default();
    // key -> sha256 of every target reported ok; keys of failed ones.
    let mut ok: BTreeMap<String, String> = BTreeMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let pruner = prune_loop(bucket.clone(), stop.clone());
    for i in 0..RUNS {
        // Runs back to back, each in its own second: distinct keys (collisions are
        // collisions.rs's subject).
        start_of_next_second();
        fig.runs += 1;
        if KILLED.contains(&i) {
            kill_mid_upload(&pg, &bucket, i);
            fig.killed += 1;
            continue;
        }
        let proxy = if doomed(i) { &failing } else { &flaky };
        let out = backhaul_std()
            .arg("backup")
            .envs(backup_env(&pg, &bucket, STAGE, "small,mid"))
            .env("AWS_ENDPOINT_URL", proxy.endpoint())
            .env("AWS_MAX_ATTEMPTS", "3")
            .output()
            .unwrap();
        let lines = summaries(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The destination check (HeadBucket, before any dump) can meet a fault on every
        // attempt too: the run then fails whole, having dumped and uploaded nothing.
        if lines.is_empty()
            && out.status.code() == Some(1)
            && stderr
                .lines()
                .last()
                .is_some_and(|l| l.contains("cannot be reached"))
        {
            fig.runs_failed += 1;
            continue;
        }
        assert_eq!(lines.len(), 2, "run {i}: {lines:?} {stderr}");
        let all_ok = lines.iter().all(|l| l["status"] == "ok");
        assert_eq!(
            out.status.code(),
            Some(if all_ok { 0 } else { 1 }),
            "run {i}: the exit code matches the summaries: {lines:?} {stderr}"
        );
        if all_ok {
            fig.runs_ok += 1;
        } else {
            fig.runs_failed += 1;
        }
        for l in lines {
            let key = l["key"].as_str().unwrap().to_string();
            if l["status"] == "ok" {
                fig.targets_ok += 1;
                ok.insert(key, l["sha256"].as_str().unwrap().to_string());
            } else {
                fig.targets_failed += 1;
                failed.push((key, l["error"].to_string()));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (deleted, prunes, gaps) = pruner.join().unwrap();
    fig.prunes = prunes;
    fig.manifest_gaps_seen = gaps;
    fig.pruned = deleted.len();
    assert!(fig.runs_failed >= 3, "the doomed runs failed: {fig:?}");
    assert!(
        prunes >= 3 && !deleted.is_empty(),
        "the prunes ran: {fig:?}"
    );
    // Prunes deleted only backups that had reported ok (older ones, by the policy).
    for k in &deleted {
        assert!(ok.contains_key(k), "pruned {k}, never reported ok");
    }
    ok.retain(|k, _| !deleted.contains(k));

    // The bucket holds exactly the ok artifacts no prune deleted, each with its manifest.
    let mut expected: Vec<String> = ok
        .keys()
        .flat_map(|k| [k.clone(), format!("{k}.manifest.json")])
        .collect();
    expected.sort();
    assert_eq!(moto().keys(&bucket), expected, "failed: {failed:?}");
    for (key, sha) in &ok {
        let m: serde_json::Value =
            serde_json::from_slice(&moto().get(&bucket, &format!("{key}.manifest.json"))).unwrap();
        assert_eq!(&m["sha256"], sha, "{key}");
        assert!(m["etag"].is_string(), "{m}");
    }
    // Every one of them verifies (directly against moto, no faults).
    let out = store_cmd(&bucket)
        .args(["verify", "--since", "1h"])
        .assert()
        .success();
    let verified = summaries(&out.get_output().stdout);
    assert_eq!(verified.len(), ok.len());
    assert!(verified.iter().all(|l| l["status"] == "ok"), "{verified:?}");

    // Leftovers: at least the killed runs' uploads; status counts what moto holds.
    let open = moto().multipart_uploads(&bucket);
    assert!(open >= KILLED.len(), "{open}");
    let status = |bucket: &str| -> serde_json::Value {
        let out = store_cmd(bucket)
            .args(["status", "--stage", STAGE, "--bucket", bucket, "--json"])
            .assert()
            .success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let st = status(&bucket);
    assert_eq!(st["incomplete_uploads"]["count"], open, "{st}");
    assert!(
        st["incomplete_uploads"]["oldest_initiated"].is_string(),
        "{st}"
    );
    // moto 5.2.5 answers ListParts with a root element the SDK rejects, so the size is
    // unknown there (null); against S3 it is the parts' bytes, at least one 5 MiB part each.
    let bytes = &st["incomplete_uploads"]["bytes"];
    assert!(
        bytes.is_null() || bytes.as_u64().unwrap() >= (5 << 20) * KILLED.len() as u64,
        "{st}"
    );
    fig.leftovers_found = open;
    // The newest is seconds old: wait so that "older than 1s" covers all of them.
    std::thread::sleep(Duration::from_millis(1100));
    let dry = store_cmd(&bucket)
        .args(["prune", "--dry-run", "--abort-incomplete-older-than", "1s"])
        .assert()
        .success();
    let lines = String::from_utf8_lossy(&dry.get_output().stdout).to_string();
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("abort ")).count(),
        open
    );
    assert_eq!(
        moto().multipart_uploads(&bucket),
        open,
        "dry run aborts nothing"
    );
    store_cmd(&bucket)
        .args(["prune", "--abort-incomplete-older-than", "1s"])
        .assert()
        .success();
    assert_eq!(moto().multipart_uploads(&bucket), 0);
    fig.leftovers_cleaned = open;
    assert_eq!(status(&bucket)["incomplete_uploads"]["count"], 0);
    // Cleaning touched no backup.
    assert_eq!(moto().keys(&bucket), expected);

    eprintln!(
        "soak figures: {fig:?}; faults injected: {:?} + {:?} (doomed proxy); took {:?}",
        flaky.chaos_counts(),
        failing.chaos_counts(),
        started.elapsed()
    );
}
