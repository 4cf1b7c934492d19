//! `backup --jobs N` (issue 32): pg_dump's directory format, each file followed while pg_dump
//! writes it and uploaded as its own object; completed only after pg_dump exited 0. Checked
//! against a real cluster, the server's own pg_dump/pg_restore and moto: the objects are every
//! file a local `pg_dump -Fd` writes, they restore to the same database, and a run that
//! fails, is signalled or killed leaves no object, no upload, no spool and no pg_dump.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::pgbouncer::{PgBouncer, PoolMode};
use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

/// ~40 tables (one big: ~25 MB of COPY text, several parts once compressed), large objects,
/// owners and grants, a view, a foreign key, a sequence.
const JOBS_SQL: &str = r#"
create role jobs_owner nologin;
create role jobs_reader nologin;
create table big (id bigint primary key, payload text);
insert into big
  select g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 31)::text)
  from generate_series(1, 180000) g;
do $$ begin
  for i in 1..38 loop
    execute format('create table t_%s (id int primary key, big_id bigint references big(id), note text)', i);
    execute format('insert into t_%s select g, g, ''n'' || g from generate_series(1, %s) g', i, i * 10);
  end loop;
end $$;
alter table t_5 owner to jobs_owner;
grant select on big to jobs_reader;
create sequence tickets;
select setval('tickets', 4242);
create view recent as select id, note from t_1 where id > 3;
select lo_from_bytea(9001, 'large object one');
select lo_from_bytea(9002, convert_to(repeat('two', 100000), 'UTF8'));
alter large object 9002 owner to jobs_owner;
"#;

fn jobs_fixture(hint: &str, sql: &str) -> Fixture {
    Fixture::builder(hint).databases(&[("jobdb", sql)]).start()
}

/// A local `pg_dump -Fd` of `db` (as postgres, over the socket) into `dir`.
fn local_dir_dump(pg: &Pg, db: &str, dir: &Path) {
    let dir = dir.to_str().unwrap();
    dump_text(pg, "pg_dump", &["-Fd", "-j", "2", "-Z", "0", "-f", dir, db]);
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Rebuilds pg_dump's directory from a backup's objects: every object decoded (`decode`) under
/// the name the manifest gives it, each checked against the manifest's size and SHA-256 first.
fn rebuild_with(
    bucket: &str,
    key: &str,
    m: &serde_json::Value,
    into: &Path,
    decode: impl Fn(&[u8]) -> Vec<u8>,
) {
    std::fs::create_dir(into).unwrap();
    let toc = moto().get(bucket, key);
    assert_eq!(sha256_hex(&toc), m["sha256"].as_str().unwrap());
    assert_eq!(toc.len() as u64, m["stored_bytes"].as_u64().unwrap());
    std::fs::write(into.join("toc.dat"), decode(&toc)).unwrap();
    for f in m["directory"]["files"].as_array().unwrap() {
        let object = moto().get(bucket, f["object"].as_str().unwrap());
        assert_eq!(f["offset"], 0);
        assert_eq!(
            object.len() as u64,
            f["stored_bytes"].as_u64().unwrap(),
            "{f}"
        );
        assert_eq!(sha256_hex(&object), f["sha256"].as_str().unwrap(), "{f}");
        let raw = decode(&object);
        assert_eq!(raw.len() as u64, f["raw_bytes"].as_u64().unwrap(), "{f}");
        std::fs::write(into.join(f["name"].as_str().unwrap()), raw).unwrap();
    }
}

fn rebuild(bucket: &str, key: &str, m: &serde_json::Value, into: &Path) {
    rebuild_with(bucket, key, m, into, |b| zstd::decode_all(b).unwrap());
}

fn pg_restore(pg: &Pg, args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(pg.bin.join("pg_restore"))
        .args(["-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string()])
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn jobs3_stores_every_file_pg_dump_writes_and_restores_identical() {
    let fx = jobs_fixture("jobs3", JOBS_SQL);
    let pg = &fx.pg;
    let original = plain_dump(pg, "jobdb");
    let out = fx.backup("jobdb").env("PG_JOBS", "3").assert().success();
    let key = artifact_key(&out.get_output().stdout);
    assert!(key.ends_with(".pgdir/toc.dat.zst"), "{key}");
    let m = fx.manifest(&key);
    assert_eq!(m["format"], 2);
    assert_eq!(m["compression"], "zstd");
    assert_eq!(m["directory"]["jobs"], 3);

    // The manifest names exactly the files a local pg_dump -Fd of the same database writes.
    let local = pg.dir.path().join("local.dir");
    local_dir_dump(pg, "jobdb", &local);
    let mut expected = names_in(&local);
    assert!(expected.remove("toc.dat"));
    let files = m["directory"]["files"].as_array().unwrap();
    let listed: BTreeSet<String> = files
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected);
    assert!(listed.iter().any(|n| n.starts_with("blob_")), "{listed:?}");

    // Each file is its own object under the run's folder; the bucket holds nothing else.
    let folder = key.strip_suffix("toc.dat.zst").unwrap();
    let objects: BTreeSet<String> = m["directory"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    for f in files {
        let object = f["object"].as_str().unwrap();
        let rest = object.strip_prefix(folder).unwrap();
        let (run, name) = rest.split_once('/').unwrap();
        assert_eq!(run.len(), 24, "{object}");
        assert_eq!(name, format!("{}.zst", f["name"].as_str().unwrap()));
        assert!(objects.contains(object));
    }
    assert_eq!(objects.len(), files.len());
    let mut all: BTreeSet<String> = objects.clone();
    all.insert(key.clone());
    all.insert(format!("{key}.manifest.json"));
    assert_eq!(
        moto().keys(&fx.bucket).into_iter().collect::<BTreeSet<_>>(),
        all
    );
    assert_eq!(moto().multipart_uploads(&fx.bucket), 0);
    let stored: u64 = m["stored_bytes"].as_u64().unwrap()
        + files
            .iter()
            .map(|f| f["stored_bytes"].as_u64().unwrap())
            .sum::<u64>();
    assert_eq!(m["directory"]["stored_bytes"], stored);
    let big = files
        .iter()
        .filter(|f| f["stored_bytes"].as_u64().unwrap() > 8 << 20)
        .count();
    assert_eq!(big, 1, "the big table is stored in several parts");

    // The objects give back a directory pg_restore reads and that restores the same database.
    let rebuilt = pg.dir.path().join("rebuilt.dir");
    rebuild(&fx.bucket, &key, &m, &rebuilt);
    let listed = pg_restore(pg, &["--list"], &rebuilt);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    pg.create_db("copy");
    let restored = pg_restore(pg, &["--exit-on-error", "-j", "2", "-d", "copy"], &rebuilt);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(plain_dump(pg, "copy"), original);

    // One backup in `list`, with all its objects' bytes.
    let listed = fx.cmd().args(["list", "--json"]).assert().success();
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["key"], key.as_str());
    assert_eq!(rows[0]["size"], stored);
    assert_eq!(rows[0]["objects"], objects.len() + 1);
    let status = fx.cmd().args(["status", "--json"]).assert().success();
    let status: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    assert_eq!(
        status["recent_backups"],
        serde_json::json!([key]),
        "data files are not backups"
    );

    // backhaul itself gives it back: in one transaction and with --jobs 2, each restore's
    // plain pg_dump equal to the original's; verify checks every object and file.
    for (db, jobs) in [("one_tx", None), ("jobs2", Some("2"))] {
        pg.create_db(db);
        let mut cmd = fx.cmd();
        cmd.args(["restore", &key, "--to", &fx.url(db)]);
        if let Some(j) = jobs {
            cmd.args(["--jobs", j]);
        }
        let a = cmd.assert().success();
        let line = &crate::common::summaries(&a.get_output().stdout)[0];
        assert_eq!(line["checksum_verified"], true, "{line}");
        assert_eq!(plain_dump(pg, db), original, "{db}");
    }
    let lo = "select string_agg(md5(lo_get(oid)), ',' order by oid) from pg_largeobject_metadata";
    assert_eq!(pg.psql("jobs2", lo), pg.psql("jobdb", lo));
    let verified = fx.cmd().args(["verify", &key]).assert().success();
    let line = &crate::common::summaries(&verified.get_output().stdout)[0];
    assert_eq!(line["status"], "ok", "{line}");
    // And right after a parallel backup: BACKUP_VERIFY_INTO restores it into a scratch
    // database and records the outcome in the new manifest.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.create_db("scratch");
    let out = fx
        .backup("jobdb")
        .env("PG_JOBS", "2")
        .env("BACKUP_VERIFY_INTO", fx.url("scratch"))
        .assert()
        .success();
    let m2 = fx.manifest(&artifact_key(&out.get_output().stdout));
    assert_eq!(m2["verification"]["ok"], true, "{m2}");

    // The manifest summarises the dump's contents as a single-archive backup's does.
    assert!(m["contents"].is_object(), "{m}");
    let single = fx.backup("jobdb").assert().success();
    let single = fx.manifest(&artifact_key(&single.get_output().stdout));
    assert_eq!(m["contents"], single["contents"]);
}

/// A database small enough for several runs in one test.
const SMALL_SQL: &str = r#"
create table a (id int primary key, v text);
insert into a select g, md5(g::text) from generate_series(1, 5000) g;
create table b (id int primary key, a_id int references a(id));
insert into b select g, g from generate_series(1, 100) g;
select lo_from_bytea(7001, 'lo');
"#;

#[test]
fn encrypted_uncompressed_jobs_backup_is_one_age_stream_per_file() {
    let fx = jobs_fixture("jobsage", SMALL_SQL);
    let pg = &fx.pg;
    let id = age::x25519::Identity::generate();
    let out = fx
        .backup("jobdb")
        .env("PG_JOBS", "2")
        .env("PG_COMPRESSION", "none")
        .env("BACKUP_ENCRYPT_TO", id.to_public().to_string())
        .assert()
        .success();
    let line = &summaries(&out.get_output().stdout)[0];
    let key = artifact_key(&out.get_output().stdout);
    assert!(key.ends_with(".pgdir/toc.dat.age"), "{key}");
    let m = fx.manifest(&key);
    assert_eq!(m["compression"], "none");
    assert!(m["encryption"].is_object(), "{m}");
    assert_eq!(line["stored_bytes"], m["directory"]["stored_bytes"]);
    for f in m["directory"]["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        assert!(
            f["object"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{name}.age")),
            "{f}"
        );
    }
    let rebuilt = pg.dir.path().join("age.dir");
    rebuild_with(&fx.bucket, &key, &m, &rebuilt, |b| {
        age::decrypt(&id, b).unwrap()
    });
    pg.create_db("copy");
    let restored = pg_restore(pg, &["--exit-on-error", "-d", "copy"], &rebuilt);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(plain_dump(pg, "copy"), plain_dump(pg, "jobdb"));
}

/// pg_dump writes the whole dump and then fails: the run fails, and what it already uploaded
/// (one-part files are completed as soon as read) is deleted, its open uploads aborted.
#[test]
fn pg_dump_failing_after_writing_everything_leaves_nothing() {
    let fx = jobs_fixture("jobsfail", JOBS_SQL);
    let dir = tempfile::tempdir().unwrap();
    let real = pg_bin_dir().join("pg_dump");
    let script = stand_in_pg_dump(
        dir.path(),
        &format!(
            "#!/bin/sh
case \"$1\" in --version) exec {r} --version;; esac
{r} \"$@\" || exit $?
sleep 1
echo 'pg_dump: error: failed on cue' >&2
exit 1
",
            r = real.display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let out = fx
        .backup("jobdb")
        .env("PG_JOBS", "3")
        .env("PG_DUMP_PATH", &script)
        .env("BACKUP_WORK_DIR", work.path())
        .assert()
        .code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "failed");
    assert!(
        line["error"].as_str().unwrap().contains("failed on cue"),
        "{line}"
    );
    assert_eq!(moto().keys(&fx.bucket), Vec::<String>::new());
    assert_eq!(moto().multipart_uploads(&fx.bucket), 0);
    assert_eq!(names_in(work.path()).len(), 0, "the spool is removed");
}

#[test]
fn file_destination_jobs_backup() {
    let fx = jobs_fixture("jobsfile", SMALL_SQL);
    let dest = tempfile::tempdir().unwrap();
    let mut cmd = backhaul();
    pg_env(&mut cmd, &fx.pg, "app", &fx.password, "jobdb");
    cmd.env("STAGE", "dev")
        .env("PG_JOBS", "2")
        .arg("backup")
        .arg("--dest")
        .arg(format!("file://{}", dest.path().display()));
    let out = cmd.assert().success();
    let key = artifact_key(&out.get_output().stdout);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.path().join(format!("{key}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let toc = std::fs::read(dest.path().join(&key)).unwrap();
    assert_eq!(sha256_hex(&toc), m["sha256"].as_str().unwrap());
    let mut raw = m["raw_bytes"].as_u64().unwrap();
    for f in m["directory"]["files"].as_array().unwrap() {
        let object = std::fs::read(dest.path().join(f["object"].as_str().unwrap())).unwrap();
        assert_eq!(sha256_hex(&object), f["sha256"].as_str().unwrap(), "{f}");
        raw += f["raw_bytes"].as_u64().unwrap();
    }
    // The summary and the `resources` line count every file pg_dump wrote, not the TOC alone.
    assert_eq!(m["directory"]["raw_bytes"].as_u64().unwrap(), raw);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["raw_bytes"].as_u64().unwrap(), raw, "{line}");
    let usage = String::from_utf8_lossy(&out.get_output().stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "resources")
        .expect("a resources line");
    assert_eq!(usage["raw_bytes"].as_u64().unwrap(), raw, "{usage}");
}

fn jobs_backup(fx: &Fixture) -> String {
    let out = fx.backup("jobdb").env("PG_JOBS", "2").assert().success();
    artifact_key(&out.get_output().stdout)
}

#[test]
fn prune_removes_every_object_of_a_directory_backup() {
    let fx = jobs_fixture("jobsprune", SMALL_SQL);
    let old = jobs_backup(&fx);
    // Keys carry seconds: the second backup must be a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let new = jobs_backup(&fx);
    assert_ne!(old, new);
    // Something a run that died while completing left in the old backup's folder.
    let stray = format!(
        "{}deadbeef/9999.dat.zst",
        old.strip_suffix("toc.dat.zst").unwrap()
    );
    moto().put(&fx.bucket, &stray, b"x".to_vec());
    let before = moto().keys(&fx.bucket);
    let new_folder = new.strip_suffix("toc.dat.zst").unwrap().to_string();
    fx.cmd()
        .args(["prune", "--keep-last", "1", "--grace", "1s"])
        .assert()
        .success();
    let after = moto().keys(&fx.bucket);
    assert!(after.len() >= 4, "{after:?}");
    assert!(
        after.iter().all(|k| k.starts_with(&new_folder)),
        "only the newest backup is left: {after:?} (before: {before:?})"
    );
    let m = fx.manifest(&new);
    assert_eq!(
        after.len(),
        m["directory"]["objects"].as_array().unwrap().len() + 2
    );
}

fn legal_hold(bucket: &str, key: &str, on: bool) {
    use aws_sdk_s3::types::{ObjectLockLegalHold, ObjectLockLegalHoldStatus};
    let status = if on {
        ObjectLockLegalHoldStatus::On
    } else {
        ObjectLockLegalHoldStatus::Off
    };
    block_on(
        moto()
            .s3()
            .put_object_legal_hold()
            .bucket(bucket)
            .key(key)
            .legal_hold(ObjectLockLegalHold::builder().status(status).build())
            .send(),
    )
    .unwrap();
}

#[test]
fn prune_keeps_a_directory_backup_whole_while_one_of_its_files_is_held() {
    let pg = Pg::start();
    pg.create_user("app", "pw");
    pg.create_db("jobdb");
    pg.psql("jobdb", SMALL_SQL);
    let bucket = moto().locked_bucket("jobslock");
    let backup = || {
        let mut cmd = store_cmd(&bucket);
        cmd.arg("backup").env("PG_JOBS", "2");
        pg_env(&mut cmd, &pg, "app", "pw", "jobdb");
        artifact_key(&cmd.assert().success().get_output().stdout)
    };
    let old = backup();
    std::thread::sleep(Duration::from_millis(1100));
    let new = backup();
    let m = manifest(&bucket, &old);
    let held = m["directory"]["objects"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    legal_hold(&bucket, &held, true);
    let before = moto().keys(&bucket);
    let prune = || {
        let out = store_cmd(&bucket)
            .args(["prune", "--keep-last", "1", "--grace", "1s"])
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stdout).to_string()
    };
    let said = prune();
    assert!(said.contains(&format!("locked {old}")), "{said}");
    assert!(said.contains("legal hold"), "{said}");
    assert_eq!(
        moto().keys(&bucket),
        before,
        "nothing of the held backup was deleted"
    );
    legal_hold(&bucket, &held, false);
    let said = prune();
    assert!(said.contains(&format!("delete {old}")), "{said}");
    let folder = new.strip_suffix("toc.dat.zst").unwrap();
    let left = moto().keys(&bucket);
    assert!(left.iter().all(|k| k.starts_with(folder)), "{left:?}");
}

/// The pids of processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            out.push((pid, text));
        }
    }
    out
}

/// Rows of sessions backhaul's tools opened (they connect as application `backhaul`).
fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ~270 MB of COPY text (about half that once compressed): four times the smallest spool
/// budget, so the spool fills even when pg_dump is slowed by other tests and backhaul's reader
/// keeps up for a while. With 135 MB, two of three full CI runs on 2026-12-06 never saw the
/// spool pass 64 MiB within 120 s (the test alone always did).
const HUGE_SQL: &str = r#"
create table huge (id bigint primary key, payload text);
insert into huge
  select g, md5(g::text) || md5((g * 3)::text) || md5((g * 5)::text) || md5((g * 7)::text)
         || md5((g * 11)::text) || md5((g * 13)::text) || md5((g * 17)::text) || md5((g * 19)::text)
  from generate_series(1, 1040000) g;
create table other (id int primary key);
insert into other select generate_series(1, 1000);
"#;

/// A `--jobs 2` backup of the huge database whose part uploads S3 holds for a long time, so
/// the spool fills and pg_dump is paused: started, and seen with its spool and pg_dump.
struct Stuck {
    fx: Fixture,
    work: tempfile::TempDir,
    child: std::process::Child,
    _proxy: FaultProxy,
    spool: PathBuf,
    log: PathBuf,
}

fn stuck_backup(hint: &str) -> Stuck {
    let fx = jobs_fixture(hint, HUGE_SQL);
    let work = tempfile::tempdir().unwrap();
    let held = Fault::Delay {
        first: 100_000,
        by: Duration::from_secs(20),
    };
    let proxy = FaultProxy::start(&moto().endpoint, vec![Rule::new("PUT", "partNumber", held)]);
    let log = fx.pg.dir.path().join("backhaul.log");
    let child = backhaul_std()
        .arg("backup")
        .env("S3_BUCKET", &fx.bucket)
        .env("STAGE", "prod")
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_PORT", fx.pg.port.to_string())
        .env("PG_DB_USER", "app")
        .env("PG_DB_PASSWORD", &fx.password)
        .env("PG_DB_NAME", "jobdb")
        .env("PG_JOBS", "2")
        .env("BACKUP_SPOOL_BUDGET", "64MiB")
        // Few bytes in flight: the upload lags far behind pg_dump.
        .env("BACKHAUL_PART_SIZE_MIB", "5")
        .env("BACKHAUL_UPLOAD_CONCURRENCY", "1")
        .env("BACKUP_WORK_DIR", work.path())
        .env("BACKHAUL_LOG", "backhaul=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut spool = None;
    wait_for(
        "the spool and its uploads appear",
        Duration::from_secs(120),
        || {
            spool = std::fs::read_dir(work.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("backhaul-pgdir-")
                });
            spool.is_some() && moto().multipart_uploads(&fx.bucket) >= 1
        },
    );
    let spool = spool.unwrap();
    wait_for("pg_dump wrote data", Duration::from_secs(120), || {
        names_in(&spool).iter().any(|n| n != "toc.dat")
    });
    // The upload lags, the spool fills up to its budget and pg_dump is paused.
    wait_for("pg_dump is paused", Duration::from_secs(120), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("spool full: pausing pg_dump"))
    });
    Stuck {
        fx,
        work,
        child,
        _proxy: proxy,
        spool,
        log,
    }
}

#[test]
fn sigterm_mid_dump_leaves_nothing_and_the_spool_is_private() {
    let mut s = stuck_backup("jobsterm");
    let spool_arg = s.spool.display().to_string();
    // The spool is ours alone, and pg_dump's argv holds no password.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&s.spool).unwrap().mode() & 0o777, 0o700);
    for name in names_in(&s.spool) {
        if let Ok(meta) = std::fs::metadata(s.spool.join(&name)) {
            assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
        }
    }
    let dumps = pids_with(&spool_arg);
    assert!(!dumps.is_empty(), "pg_dump runs");
    for (_, cmdline) in &dumps {
        assert!(!cmdline.contains(&s.fx.password), "{cmdline}");
        assert!(cmdline.contains("--format=directory"), "{cmdline}");
    }

    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    let status = s.child.wait().unwrap();
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{log}");
    assert_eq!(moto().keys(&s.fx.bucket), Vec::<String>::new(), "{log}");
    assert_eq!(moto().multipart_uploads(&s.fx.bucket), 0, "{log}");
    assert!(!s.spool.exists(), "the spool is removed");
    assert_eq!(names_in(s.work.path()).len(), 0);
    assert_eq!(pids_with(&spool_arg), vec![], "no pg_dump is left");
    wait_no_backhaul_session(&s.fx.pg, "true", Duration::from_secs(30));
}

#[test]
fn timeout_mid_upload_leaves_nothing() {
    let fx = jobs_fixture("jobstimeout", JOBS_SQL);
    let held = Fault::Delay {
        first: 100_000,
        by: Duration::from_secs(20),
    };
    let proxy = FaultProxy::start(&moto().endpoint, vec![Rule::new("PUT", "partNumber", held)]);
    let work = tempfile::tempdir().unwrap();
    let out = fx
        .backup("jobdb")
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("PG_JOBS", "3")
        .env("BACKUP_TIMEOUT", "8s")
        .env("BACKUP_WORK_DIR", work.path())
        .assert()
        .code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert!(
        line["error"].as_str().unwrap().contains("timed out"),
        "{line}"
    );
    assert_eq!(moto().keys(&fx.bucket), Vec::<String>::new());
    assert_eq!(moto().multipart_uploads(&fx.bucket), 0);
    assert_eq!(names_in(work.path()).len(), 0, "the spool is removed");
    wait_no_backhaul_session(&fx.pg, "true", Duration::from_secs(30));
}

#[test]
fn kill9_leaves_no_pg_dump_and_its_leftovers_are_cleaned() {
    let mut s = stuck_backup("jobskill");
    let spool_arg = s.spool.display().to_string();
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGKILL);
    }
    s.child.wait().unwrap();
    wait_for("no pg_dump is left", Duration::from_secs(30), || {
        pids_with(&spool_arg).is_empty()
    });
    wait_no_backhaul_session(&s.fx.pg, "true", Duration::from_secs(30));
    // Nothing looks like a backup; the open uploads (and any small file already completed)
    // are what `prune --abort-incomplete-older-than` removes.
    assert!(moto().multipart_uploads(&s.fx.bucket) >= 1);
    assert!(moto()
        .keys(&s.fx.bucket)
        .iter()
        .all(|k| !k.contains("toc.dat")));
    let out = s.fx.cmd().arg("list").arg("--json").assert().success();
    assert!(out.get_output().stdout.is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    s.fx.cmd()
        .args(["prune", "--abort-incomplete-older-than", "1s"])
        .assert()
        .success();
    assert_eq!(moto().multipart_uploads(&s.fx.bucket), 0);
    assert_eq!(moto().keys(&s.fx.bucket), Vec::<String>::new());
    // The next run sweeps the killed run's spool.
    assert!(s.spool.exists());
    s.fx.backup("jobdb")
        .env("PG_JOBS", "2")
        .env("BACKUP_WORK_DIR", s.work.path())
        .arg("--dry-run")
        .assert()
        .success();
    assert!(!s.spool.exists(), "swept");
}

/// Writes `text` as an executable `pg_dump` script in `dir`: a stand-in for a test.
fn stand_in_pg_dump(dir: &Path, text: &str) -> PathBuf {
    let script = dir.join("pg_dump");
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// A stand-in pg_dump that records every call, so a test can tell it never ran.
fn recording_pg_dump(dir: &Path) -> (PathBuf, PathBuf) {
    let calls = dir.join("calls");
    let script = stand_in_pg_dump(
        dir,
        &format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec {} \"$@\"\n",
            calls.display(),
            pg_bin_dir().join("pg_dump").display()
        ),
    );
    (script, calls)
}

#[test]
fn pooler_hosts_and_what_jobs_cannot_go_with_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (pg_dump, calls) = recording_pg_dump(dir.path());
    let bucket = moto().bucket("jobsrefuse");
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut cmd = backhaul_moto();
        cmd.arg("backup")
            .args(args)
            .env("S3_BUCKET", &bucket)
            .env("STAGE", "prod")
            .env("PG_DB_HOST", "127.0.0.1")
            .env("PG_DB_USER", "app")
            .env("PG_DB_PASSWORD", "secret")
            .env("PG_DB_NAME", "app")
            .env("PG_DUMP_PATH", &pg_dump)
            .env("PG_JOBS", "2");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.assert().code(2);
        String::from_utf8_lossy(&out.get_output().stderr).to_string()
    };
    let err = run(
        &[("PG_DB_HOST", "ep-cool-1-pooler.us-east-2.aws.neon.tech")],
        &[],
    );
    assert!(err.contains("PG_JOBS"), "{err}");
    assert!(
        err.contains("ep-cool-1.us-east-2.aws.neon.tech"),
        "names the direct host: {err}"
    );
    let err = run(
        &[
            ("PG_DB_HOST", "aws-0-eu-central-1.pooler.supabase.com"),
            ("PG_DB_PORT", "6543"),
        ],
        &[],
    );
    assert!(err.contains("PG_JOBS") && err.contains("pooler"), "{err}");
    let err = run(&[("PG_COMPRESSION", "pg")], &[]);
    assert!(err.contains("PG_COMPRESSION"), "{err}");
    let err = run(&[("PG_JOBS", "33")], &[]);
    assert!(err.contains("PG_JOBS"), "{err}");
    let err = run(&[("BACKUP_SPOOL_BUDGET", "1MiB")], &[]);
    assert!(err.contains("BACKUP_SPOOL_BUDGET"), "{err}");
    for arg in [
        "--pg-dump-arg=-Fc",
        "--pg-dump-arg=--jobs=4",
        "--pg-dump-arg=--no-synchronized-snapshots",
    ] {
        let err = run(&[], &[arg]);
        assert!(err.contains("--pg-dump-arg"), "{arg}: {err}");
    }
    assert!(!calls.exists(), "pg_dump never ran");
    // A spool directory that cannot be used: found before any dump starts.
    let err = run(&[("BACKUP_WORK_DIR", "/nonexistent/spool")], &[]);
    assert!(err.contains("BACKUP_WORK_DIR"), "{err}");
    let err = run(&[("BACKUP_SPOOL_BUDGET", "1000000TiB")], &[]);
    assert!(
        err.contains("BACKUP_WORK_DIR") && err.contains("MiB free"),
        "{err}"
    );
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
    assert_eq!(moto().multipart_uploads(&bucket), 0);
}

#[test]
fn same_second_jobs_runs_one_wins_and_the_loser_leaves_nothing() {
    let fx = jobs_fixture("jobscollide", SMALL_SQL);
    for _attempt in 0..5 {
        // The second run's entry is completed 2 s late: both reach it, one after the other.
        let hold = Fault::Delay {
            first: 1,
            by: Duration::from_secs(2),
        };
        let proxy = FaultProxy::start(&moto().endpoint, vec![Rule::new("POST", "uploadId", hold)]);
        crate::collisions::start_of_next_second();
        let spawn = |endpoint: String| {
            backhaul_std()
                .arg("backup")
                .env("S3_BUCKET", &fx.bucket)
                .env("STAGE", "prod")
                .env("AWS_ENDPOINT_URL", endpoint)
                .env("PG_DB_HOST", "127.0.0.1")
                .env("PG_DB_PORT", fx.pg.port.to_string())
                .env("PG_DB_USER", "app")
                .env("PG_DB_PASSWORD", &fx.password)
                .env("PG_DB_NAME", "jobdb")
                .env("PG_JOBS", "2")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(moto().endpoint.clone()), spawn(proxy.endpoint()));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let (la, lb) = (summaries(&a.stdout), summaries(&b.stdout));
        let (la, lb) = (la[0].clone(), lb[0].clone());
        if la["key"] != lb["key"] {
            assert!(a.status.success() && b.status.success(), "{la} {lb}");
            for o in moto().keys(&fx.bucket) {
                block_on(
                    moto()
                        .s3()
                        .delete_object()
                        .bucket(&fx.bucket)
                        .key(&o)
                        .send(),
                )
                .unwrap();
            }
            continue;
        }
        let key = la["key"].as_str().unwrap().to_string();
        let mut runs = [(a, la), (b, lb)];
        runs.sort_by_key(|(o, _)| !o.status.success());
        let [(won, _), (lost, ll)] = runs;
        assert_eq!(
            (won.status.code(), lost.status.code()),
            (Some(0), Some(1)),
            "{ll}"
        );
        assert!(
            ll["error"].as_str().unwrap().contains("already exists"),
            "{ll}"
        );
        // Only the winner's objects are there, each listed in its manifest.
        let m = fx.manifest(&key);
        let mut expected: BTreeSet<String> = m["directory"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap().to_string())
            .collect();
        expected.insert(key.clone());
        expected.insert(format!("{key}.manifest.json"));
        assert_eq!(
            moto().keys(&fx.bucket).into_iter().collect::<BTreeSet<_>>(),
            expected
        );
        assert_eq!(moto().multipart_uploads(&fx.bucket), 0, "the loser aborted");
        return;
    }
    panic!("five pairs of simultaneous runs never shared a second");
}

/// `backhaul backup` of `jobdb` as `app`, through `bouncer` instead of the cluster.
fn backup_through(fx: &Fixture, bouncer: &PgBouncer) -> assert_cmd::Command {
    let mut cmd = fx.backup("jobdb");
    cmd.env("PG_DB_PORT", bouncer.port.to_string());
    cmd
}

/// PgBouncer in transaction mode behind a name nothing recognises (127.0.0.1): the probe sees
/// one client's session handed to the next and refuses before pg_dump starts.
#[test]
fn pgbouncer_transaction_mode_is_refused_before_pg_dump() {
    let fx = jobs_fixture("jobsbouncer", SMALL_SQL);
    let bouncer = PgBouncer::start(&fx.pg, PoolMode::Transaction, 1, "app", &fx.password);
    let dir = tempfile::tempdir().unwrap();
    let (pg_dump, calls) = recording_pg_dump(dir.path());
    let work = tempfile::tempdir().unwrap();
    let out = backup_through(&fx, &bouncer)
        .env("PG_JOBS", "2")
        .env("PG_DUMP_PATH", &pg_dump)
        .env("BACKUP_WORK_DIR", work.path())
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let refusal: Vec<&str> = err.lines().filter(|l| l.contains("PG_JOBS")).collect();
    assert_eq!(refusal.len(), 1, "one line: {err}");
    assert!(
        refusal[0].contains("transaction pooler") && refusal[0].contains("direct address"),
        "{err}"
    );
    assert!(!err.contains(&fx.password), "{err}");
    // pg_dump was only asked its version (finding the tools), never to dump.
    let ran = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(ran.lines().all(|l| l == "--version"), "{ran}");
    assert_eq!(moto().keys(&fx.bucket), Vec::<String>::new());
    assert_eq!(moto().multipart_uploads(&fx.bucket), 0);
    assert_eq!(names_in(work.path()).len(), 0, "no spool");
    // The same pooler with one job is not probed: a single pg_dump connection.
    let out = backup_through(&fx, &bouncer)
        .env("BACKUP_GLOBALS", "off")
        .assert()
        .success();
    artifact_key(&out.get_output().stdout);
}

/// PgBouncer in session mode resets each server session between clients: the probe passes,
/// and pg_dump -j 2 (a leader and two workers, each its own client and so its own server
/// connection) shares its snapshot through it as it would directly.
#[test]
fn pgbouncer_session_mode_is_allowed() {
    let fx = jobs_fixture("jobssession", SMALL_SQL);
    // Three server connections at once (pg_dump's leader and two workers), one more for psql.
    let bouncer = PgBouncer::start(&fx.pg, PoolMode::Session, 4, "app", &fx.password);
    let out = backup_through(&fx, &bouncer)
        .env("PG_JOBS", "2")
        .env("BACKUP_GLOBALS", "off")
        .assert()
        .success();
    let key = artifact_key(&out.get_output().stdout);
    let m = fx.manifest(&key);
    assert_eq!(m["directory"]["jobs"], 2);
    let rebuilt = fx.pg.dir.path().join("through-bouncer.dir");
    rebuild(&fx.bucket, &key, &m, &rebuilt);
    fx.pg.create_db("copy");
    let restored = pg_restore(&fx.pg, &["--exit-on-error", "-d", "copy"], &rebuilt);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(plain_dump(&fx.pg, "copy"), plain_dump(&fx.pg, "jobdb"));
    // The dump went through PgBouncer, not around it.
    assert!(bouncer.log().contains("jobdb"), "{}", bouncer.log());
    let pid = bouncer.pid();
    drop(bouncer);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pgbouncer is stopped on drop"
    );
}

/// The spool's events of a run, in order, from its trace log: `("Created", "toc.dat")`, ...
fn spool_events(stderr: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "spool event")
        .map(|l| {
            let ev = l["event"].as_str().unwrap().to_string();
            match ev.split_once("(\"") {
                Some((kind, rest)) => (kind.to_string(), rest.trim_end_matches("\")").to_string()),
                None => (ev, String::new()),
            }
        })
        .collect()
}

/// The order everything else rests on (design 0.1): this machine's pg_dump -Fd -j 2 writes
/// and closes toc.dat before it creates any data file, as the real spool watch sees it.
#[test]
fn toc_comes_first() {
    let fx = jobs_fixture("jobstoc", JOBS_SQL);
    let out = fx
        .backup("jobdb")
        .env("PG_JOBS", "2")
        .env("BACKUP_GLOBALS", "off")
        .env("BACKHAUL_LOG", "info,backhaul::commands::backup::dir=trace")
        .assert()
        .success();
    let events = spool_events(&out.get_output().stderr);
    assert!(
        events.iter().all(|(kind, _)| kind != "Overflow"),
        "the watch kept every event: {events:?}"
    );
    let toc_closed = events
        .iter()
        .position(|e| *e == ("Closed".to_string(), "toc.dat".to_string()))
        .unwrap_or_else(|| panic!("toc.dat closed: {events:?}"));
    assert_eq!(
        events[0],
        ("Created".into(), "toc.dat".into()),
        "{events:?}"
    );
    let data: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, (kind, name))| kind == "Created" && name != "toc.dat")
        .map(|(i, _)| i)
        .collect();
    // ~40 tables with rows, and two large objects: every one a file of its own.
    assert!(data.len() >= 40, "{events:?}");
    assert!(
        data.iter().all(|&i| i > toc_closed),
        "a data file was created before toc.dat was closed: {events:?}"
    );
}

/// A pg_dump that wrote a data file before its TOC breaks what the follower relies on: the
/// run fails (the runtime guard), leaving nothing.
#[test]
fn data_before_the_toc_fails_the_backup() {
    let fx = jobs_fixture("jobsdatafirst", SMALL_SQL);
    let dir = tempfile::tempdir().unwrap();
    let script = stand_in_pg_dump(
        dir.path(),
        &format!(
            "#!/bin/sh
case \"$1\" in --version) exec {} --version;; esac
for a in \"$@\"; do case \"$a\" in --file=*) d=\"${{a#--file=}}\";; esac; done
printf 'COPY first\\n' > \"$d/4000.dat\"
sleep 0.5
printf 'toc' > \"$d/toc.dat\"
",
            pg_bin_dir().join("pg_dump").display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let out = fx
        .backup("jobdb")
        .env("PG_JOBS", "2")
        .env("BACKUP_GLOBALS", "off")
        .env("PG_DUMP_PATH", &script)
        .env("BACKUP_WORK_DIR", work.path())
        .assert()
        .code(1);
    let line = &summaries(&out.get_output().stdout)[0];
    assert_eq!(line["status"], "failed");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("wrote data (4000.dat) before its TOC: unsupported"),
        "{line}"
    );
    assert_eq!(moto().keys(&fx.bucket), Vec::<String>::new());
    assert_eq!(moto().multipart_uploads(&fx.bucket), 0);
    assert_eq!(names_in(work.path()).len(), 0, "the spool is removed");
}
