//! Refuse before the dump, never after: every destination or setting that cannot work is
//! refused (exit 2, one line naming it) before pg_dump or pg_dumpall start. The dump tools are
//! wrappers that log each real run, so "no dump ran" is observed, not assumed; one control
//! case shows the same wrappers do log when the configuration is good.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::contract::Contract;
use crate::common::*;

/// `pg_dump` and `pg_dumpall` that append their name and argv to `$DUMP_LOG` (version probes
/// excepted) and run the real tool of the same name.
fn logging_tools(dir: &Path, real: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["pg_dump", "pg_dumpall"] {
        let path = bin.join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/usr/bin/env bash\ncase \"${{1:-}}\" in --version|-V) ;; *) echo \"{tool} $*\" >> \"$DUMP_LOG\";; esac\nexec {} \"$@\"\n",
                real.join(tool).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin.join("pg_dump")
}

struct Setup {
    fx: Fixture,
    pg_dump: PathBuf,
    log: PathBuf,
}

impl Setup {
    fn start(hint: &str) -> Setup {
        let fx = Fixture::start(hint);
        let pg_dump = logging_tools(fx.pg.dir.path(), &fx.pg.bin);
        let log = fx.pg.dir.path().join("dumps.log");
        Setup { fx, pg_dump, log }
    }

    /// A backup that would work, with the dump tools logging; globals on, so pg_dumpall runs too.
    fn backup(&self, endpoint: &str) -> assert_cmd::Command {
        let mut cmd = backhaul();
        cmd.arg("backup")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("S3_FORCE_PATH_STYLE", "true")
            .env("S3_BUCKET", &self.fx.bucket)
            .env("STAGE", "prod")
            .env("BACKUP_GLOBALS", "on")
            .env("PG_DUMP_PATH", &self.pg_dump)
            .env("DUMP_LOG", &self.log);
        pg_env(&mut cmd, &self.fx.pg, "app", &self.fx.password, "app");
        cmd
    }

    fn dumps(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `cmd`, expects exit 2 with one line containing every `needle`, and no dump.
    fn refused(&self, what: &str, mut cmd: assert_cmd::Command, needles: &[&str]) -> String {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(lines.len(), 1, "{what}: one line, got {stderr}");
        for n in needles {
            assert!(lines[0].contains(n), "{what}: {n:?} not in {stderr}");
        }
        assert_eq!(self.dumps(), "", "{what}: a dump ran before the refusal");
        lines[0].to_string()
    }
}

fn lockless_bucket() -> String {
    moto().bucket("nolock")
}

#[test]
fn destination_is_checked_before_any_dump() {
    let s = Setup::start("refuse");
    let rec = Contract::start();
    let endpoint = rec.endpoint();

    let mut cmd = s.backup(&endpoint);
    cmd.args(["--bucket", "no-such-bucket-here"]);
    s.refused(
        "missing bucket",
        cmd,
        &["--bucket", "no-such-bucket-here", "no such bucket"],
    );

    let mut cmd = s.backup(&endpoint);
    cmd.env("S3_BUCKET", lockless_bucket())
        .env("BACKUP_LOCK_DAYS", "2");
    s.refused(
        "lock without Object Lock",
        cmd,
        &["BACKUP_LOCK_DAYS", "Object Lock", "nolock"],
    );

    let mut cmd = s.backup(&endpoint);
    cmd.env("AWS_ENDPOINT_URL", "http//127.0.0.1:1");
    s.refused("malformed endpoint", cmd, &["AWS_ENDPOINT_URL"]);

    for bad in ["0", "abc"] {
        let mut cmd = s.backup(&endpoint);
        cmd.env("AWS_MAX_ATTEMPTS", bad);
        s.refused("retry setting", cmd, &["AWS_MAX_ATTEMPTS"]);
    }

    let missing = s.fx.pg.dir.path().join("no-such-mount/backups");
    let mut cmd = s.backup(&endpoint);
    cmd.env_remove("S3_BUCKET")
        .env("BACKUP_DEST", format!("file://{}", missing.display()));
    s.refused("missing directory", cmd, &["BACKUP_DEST", "does not exist"]);
    assert!(
        !missing.parent().unwrap().exists(),
        "backhaul created the missing destination"
    );

    let file = s.fx.pg.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cmd = s.backup(&endpoint);
    cmd.env_remove("S3_BUCKET")
        .args(["--dest", &format!("file://{}", file.display())]);
    s.refused("not a directory", cmd, &["--dest", "not a directory"]);

    let mut cmd = s.backup(&endpoint);
    cmd.env("BACKUP_DEST", "s3://other-bucket");
    s.refused(
        "destination given twice",
        cmd,
        &["BACKUP_DEST", "S3_BUCKET", "both set"],
    );

    let mut cmd = s.backup(&endpoint);
    cmd.env("STAGE", "prod-");
    s.refused("stage schedule refuses", cmd, &["STAGE", "\"prod-\""]);

    let mut cmd = s.backup(&endpoint);
    cmd.env("PG_DB_PORT", "5432")
        .env("PG_DB_HOST", "127.0.0.1:56433");
    s.refused("two ports", cmd, &["PG_DB_HOST", "56433", "5432"]);

    // The checks' requests are ones real S3 accepts.
    rec.check(&["s3:HeadBucket", "s3:GetObjectLockConfiguration"]);

    // Control: the same wrappers log when nothing is wrong, and Object Lock that is there
    // passes the check.
    let mut cmd = s.backup(&endpoint);
    cmd.env("S3_BUCKET", moto().locked_bucket("refuse-lock"))
        .env("BACKUP_LOCK_DAYS", "1");
    cmd.assert().success();
    let dumps = s.dumps();
    assert!(dumps.contains("pg_dump "), "{dumps}");
    assert!(dumps.contains("pg_dumpall "), "{dumps}");
}

/// `host:port` works from PG_DB_HOST and from the secret; and the backup's key, restored
/// without STAGE, gives the same database back.
#[test]
fn host_with_port_is_understood() {
    let s = Setup::start("hostport");
    let mut cmd = s.backup(&moto().endpoint);
    cmd.env("PG_DB_HOST", format!("127.0.0.1:{}", s.fx.pg.port))
        .env_remove("PG_DB_PORT")
        .env("BACKUP_GLOBALS", "off");
    let out = cmd.assert().success();
    assert!(s.dumps().contains(&format!("127.0.0.1:{}", s.fx.pg.port)));

    // A full key names its stage: restoring it needs no STAGE.
    let key = artifact_key(&out.get_output().stdout);
    s.fx.pg.create_db("app_copy");
    store_cmd(&s.fx.bucket)
        .env_remove("STAGE")
        .args(["restore", &key, "--to", &s.fx.url("app_copy")])
        .assert()
        .success();
    assert_eq!(s.fx.pg.fingerprint("app_copy"), s.fx.pg.fingerprint("app"));

    // The secret's host may carry the port too (and agree with its "port" field).
    std::fs::write(&s.log, "").unwrap();
    let secret = serde_json::json!({
        "username": "app", "password": s.fx.password,
        "host": format!("127.0.0.1:{}", s.fx.pg.port), "port": s.fx.pg.port, "dbname": "app",
    });
    let mut cmd = s.backup(&moto().endpoint);
    cmd.env_remove("PG_DB_HOST")
        .env_remove("PG_DB_PORT")
        .env_remove("PG_DB_USER")
        .env_remove("PG_DB_PASSWORD")
        .env_remove("PG_DB_NAME")
        .env("POSTGRES_SECRET", secret.to_string())
        .env("BACKUP_GLOBALS", "off");
    cmd.assert().success();
    assert!(s.dumps().contains("pg_dump "));
}

/// `restore --clean` behind another session's lock: the log names the relation and the
/// session holding it, the restore gives up at `--lock-timeout`, and the target is unchanged.
/// The watcher asks over one session, which ends with the restore.
#[test]
fn restore_behind_a_lock_says_why_and_gives_up() {
    let watchers = restore_behind_a_lock("lockwait", Disrupt::None);
    let distinct: std::collections::BTreeSet<&String> = watchers.iter().collect();
    assert_eq!(distinct.len(), 1, "watcher sessions seen: {watchers:?}");
    assert!(watchers.len() >= 10, "watcher sessions seen: {watchers:?}");
}

/// The watcher's session ended by someone else (an administrator's `pg_terminate_backend`):
/// the next poll opens another and the restore still gives up at `--lock-timeout`.
#[test]
fn a_terminated_lock_watcher_reconnects() {
    let watchers = restore_behind_a_lock("lockwatchkill", Disrupt::TerminateWatcher);
    let distinct: std::collections::BTreeSet<&String> = watchers.iter().collect();
    assert_eq!(distinct.len(), 2, "watcher sessions seen: {watchers:?}");
}

/// `kill -9` of a restore waiting behind a lock: its pg_restore and the watcher's psql see
/// their input end and leave, so no session of it stays on the server, and nothing committed.
#[test]
fn a_killed_restore_leaves_no_session() {
    restore_behind_a_lock("lockkill9", Disrupt::KillRestore);
}

/// The argv of every psql and pg_restore running now that mentions `port`, as any local user
/// reads it in `/proc/<pid>/cmdline`.
fn tool_argvs(port: u16) -> Vec<String> {
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .filter(|c| {
            let tool = c.split(' ').next().unwrap_or_default();
            (tool.ends_with("/psql") || tool.ends_with("/pg_restore")) && c.contains(&port)
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Disrupt {
    None,
    /// `pg_terminate_backend` on the first watcher session seen.
    TerminateWatcher,
    /// SIGKILL to backhaul once its watcher is seen.
    KillRestore,
}

/// Runs the lock-wait case, disrupted as `disrupt` says. Returns the watcher's session pids, as
/// sampled every 200 ms while the restore ran.
fn restore_behind_a_lock(name: &str, disrupt: Disrupt) -> Vec<String> {
    let fx = Fixture::start(name);
    let out = fx.backup("app").assert().success();
    let key = artifact_key(&out.get_output().stdout);
    let before = fx.pg.fingerprint("app");

    let mut holder = std::process::Command::new(fx.pg.bin.join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &fx.pg.port.to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            "begin; lock table people in access share mode; select pg_sleep(120);",
        ])
        .env("PGPASSWORD", &fx.password)
        .env("PGAPPNAME", "lock-holder")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fx
        .pg
        .psql(
            "app",
            "select count(*) from pg_locks l join pg_stat_activity a using (pid) where a.application_name = 'lock-holder' and l.granted and l.relation = 'people'::regclass",
        )
        .trim()
        != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the lock was never taken");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let holder_pid = fx.pg.psql(
        "app",
        "select pid from pg_stat_activity where application_name = 'lock-holder'",
    );

    // While the restore waits, the watcher's sessions as the server sees them.
    let done = std::sync::atomic::AtomicBool::new(false);
    let restore = backhaul_std()
        .env("S3_BUCKET", &fx.bucket)
        .env("STAGE", "prod")
        .env("RESTORE_LOCK_TIMEOUT", "8s")
        .args(["restore", &key, "--to", &fx.url("app"), "--clean"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let restore_pid = restore.id() as i32;
    let (out, watchers) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen: Vec<String> = Vec::new();
            let mut argvs: Vec<String> = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                argvs.extend(tool_argvs(fx.pg.port));
                let pids = fx.pg.psql(
                    "app",
                    "select pid from pg_stat_activity where application_name = 'backhaul' and query like '%pg_blocking_pids%' and pid <> pg_backend_pid()",
                );
                if seen.is_empty() && !pids.is_empty() {
                    match disrupt {
                        Disrupt::TerminateWatcher => {
                            fx.pg.psql("app", &format!("select pg_terminate_backend({pids})"));
                        }
                        // SAFETY: kill(2) on the child this test spawned.
                        Disrupt::KillRestore => unsafe {
                            libc::kill(restore_pid, libc::SIGKILL);
                        },
                        Disrupt::None => {}
                    }
                }
                seen.extend(pids.lines().map(str::to_string));
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            (seen, argvs)
        });
        let out = restore.wait_with_output().unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap())
    });
    let (watchers, argvs) = watchers;
    // `--to` held the password; no psql or pg_restore of ours shows it to other local users,
    // the long-lived watcher included.
    let encoded =
        percent_encoding::utf8_percent_encode(&fx.password, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    for argv in &argvs {
        assert!(
            !argv.contains(&fx.password) && !argv.contains(&encoded),
            "{argv}"
        );
    }
    if disrupt == Disrupt::None {
        assert!(
            argvs
                .iter()
                .any(|a| a.contains("ON_ERROR_STOP=1 -f - --dbname=")),
            "the watcher's psql was never seen: {argvs:?}"
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if disrupt == Disrupt::KillRestore {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{stderr}");
        // The watcher's psql is gone at once (its input ended, and it gets SIGKILL with us).
        // pg_restore is killed too, but its server session waits in the lock queue, where
        // PostgreSQL does not look at the client, until the lock is free; then it finds the
        // client gone and rolls back.
        wait_no_backhaul_session(
            &fx.pg,
            "query like '%pg_blocking_pids%'",
            std::time::Duration::from_secs(10),
        );
        // The holder's own session sleeps on past its client too: ended on the server.
        fx.pg.psql(
            "app",
            &format!("select pg_terminate_backend({})", holder_pid.trim()),
        );
        let _ = holder.kill();
        let _ = holder.wait();
        wait_no_backhaul_session(&fx.pg, "true", std::time::Duration::from_secs(10));
        assert_eq!(
            fx.pg.fingerprint("app"),
            before,
            "a killed restore changed the target"
        );
        return watchers;
    }
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let waits = stderr
        .lines()
        .find(|l| l.contains("restore waits for"))
        .unwrap_or_else(|| panic!("no report of the wait: {stderr}"));
    assert!(waits.contains("people"), "{waits}");
    assert!(waits.contains(holder_pid.trim()), "{waits}");
    assert!(waits.contains("lock-holder"), "{waits}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "error: people stayed locked by session {} for longer than --lock-timeout 8s",
            holder_pid.trim()
        )),
        "{last}"
    );
    assert!(!stderr.contains(&fx.password), "{stderr}");
    assert_eq!(
        fx.pg.fingerprint("app"),
        before,
        "a failed restore changed the target"
    );
    // The watcher's session closed with the restore.
    wait_no_backhaul_session(&fx.pg, "true", std::time::Duration::from_secs(10));
    watchers
}

/// `list --database X` with no backups of X names the databases that have some.
#[test]
fn list_of_an_unknown_database_names_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    for db in ["app", "audit"] {
        let ts = "2024-01-01_00h00m00s";
        let path = dir
            .path()
            .join(format!("prod/{ts}_PGSQL/backup_prod_{db}_{ts}.dump.zst"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }
    let dest = format!("file://{}", dir.path().display());
    let list = |db: &str| {
        let mut cmd = backhaul();
        cmd.args(["list", "--stage", "prod", "--dest", &dest, "--database", db]);
        cmd.output().unwrap()
    };
    let out = list("nope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: --database \"nope\": no backups of it in stage prod; databases with backups: app, audit"
    );
    let out = list("audit");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("audit") && !stdout.contains(" app "),
        "{stdout}"
    );
}
