//! Secrets and data at rest (issue 27). Runs are paused inside their tool (a stand-in that
//! waits for the test before or after running the real one) while another user (`nobody`)
//! tries every temp path; runs are SIGKILLed there and must leave no child, and the next run
//! must sweep what they left. Runs get umask 000, so only backhaul's own modes keep others out.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::contract::Contract;
use crate::common::mongod::*;
use crate::common::*;

const MONGO_PASSWORD: &str = "s3cr@t-pw";
const MONGO_USERINFO: &str = "backup:s3cr%40t-pw";
/// A value of the mongo seed, plain in a dump's BSON.
const MONGO_DATA: &str = "user7@example.com";
/// A value of the PostgreSQL table, plain in the decoded archive's COPY data.
const PG_DATA: &str = "row-marker-27-confidential";

/// Where the runs keep their temp paths: `tmp` (TMPDIR) and `work` (BACKUP_WORK_DIR), both
/// world-writable and sticky like /tmp, under a path `nobody` can traverse. `marks` is the
/// stand-ins' rendezvous, `tools` holds them.
struct Place {
    dir: TempDir,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        for (sub, mode) in [
            ("tmp", 0o1777),
            ("work", 0o1777),
            ("marks", 0o755),
            ("tools", 0o755),
        ] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            set_mode(&dir.path().join(sub), mode);
        }
        Place { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn temp_roots(&self) -> [PathBuf; 2] {
        [self.path("tmp"), self.path("work")]
    }

    /// A stand-in for `real` named `name` in `tools`: its first call other than `--version`
    /// records its pid in `marks/paused` and waits for `marks/go`, before running the real
    /// tool or (`after`) once the real tool has finished (its output then on disk).
    fn pausing(&self, name: &str, real: &Path, after: bool) -> PathBuf {
        let body = if after {
            format!("'{}' \"$@\"; rc=$?; pause; exit $rc", real.display())
        } else {
            format!("pause; exec '{}' \"$@\"", real.display())
        };
        let script = format!(
            r#"#!/bin/bash
marks='{marks}'
if [ "${{1:-}}" = --version ] || ! mkdir "$marks/once" 2>/dev/null; then exec '{real}' "$@"; fi
pause() {{
  echo $$ > "$marks/paused.tmp" && mv "$marks/paused.tmp" "$marks/paused"
  # Gone with the test (it failed): nobody will say go.
  while [ ! -e "$marks/go" ]; do [ -d "$marks" ] || exit 1; sleep 0.05; done
}}
{body}
"#,
            marks = self.path("marks").display(),
            real = real.display(),
        );
        let p = self.path("tools").join(name);
        std::fs::write(&p, script).unwrap();
        set_mode(&p, 0o755);
        p
    }

    /// Starts `cmd` (a backhaul run) with umask 000, its output to files beside the roots.
    fn start(&self, mut cmd: Command, name: &str) -> Run {
        let out = self.path(&format!("{name}.out"));
        let err = self.path(&format!("{name}.err"));
        cmd.env("TMPDIR", self.path("tmp"))
            .env("BACKUP_WORK_DIR", self.path("work"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        // SAFETY: umask(2) in the forked test child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        Run {
            child: cmd.spawn().unwrap(),
            out,
            err,
        }
    }

    /// Waits for the stand-in to pause and returns its pid.
    fn paused(&self, run: &mut Run) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mark = self.path("marks").join("paused");
        loop {
            if let Ok(pid) = std::fs::read_to_string(&mark) {
                return pid.trim().parse().unwrap();
            }
            if let Some(status) = run.child.try_wait().unwrap() {
                panic!(
                    "backhaul ended ({status}) before the tool paused: {}",
                    run.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the tool never paused: {}",
                run.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resume(&self) {
        std::fs::write(self.path("marks").join("go"), "").unwrap();
    }

    /// Lets the next run's stand-in pause again.
    fn reset_marks(&self) {
        for m in ["once", "paused", "go"] {
            let p = self.path("marks").join(m);
            let _ = std::fs::remove_dir(&p);
            let _ = std::fs::remove_file(&p);
        }
    }

    /// Asserts that the roots hold something and that `nobody` can read none of it.
    fn assert_private(&self, what: &str) {
        let paths = walk(&self.temp_roots());
        assert!(!paths.is_empty(), "{what}: no temp path to check");
        let readable = readable_by_nobody(&paths);
        assert!(
            readable.is_empty(),
            "{what}: readable by another user: {readable:?} (of {paths:?})"
        );
    }

    /// Files under the roots holding any of `needles`.
    fn files_containing(&self, needles: &[&str]) -> Vec<PathBuf> {
        walk(&self.temp_roots())
            .into_iter()
            .filter(|p| p.is_file())
            .filter(|p| {
                let body = std::fs::read(p).unwrap_or_default();
                needles
                    .iter()
                    .any(|n| body.windows(n.len()).any(|w| w == n.as_bytes()))
            })
            .collect()
    }
}

struct Run {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// A test that fails mid-run leaves no backhaul behind.
impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Run {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn wait_success(mut self) -> String {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {}", self.stderr());
        std::fs::read_to_string(&self.out).unwrap()
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every path under `roots` (the roots themselves left out), as root sees them.
fn walk(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The paths `nobody` can list or enter (directories) or read (files).
fn readable_by_nobody(paths: &[PathBuf]) -> Vec<String> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
        ])
        .arg(
            r#"for p do
  if [ -d "$p" ]; then
    { ls "$p" >/dev/null 2>&1 || (cd "$p" 2>/dev/null); } && echo "$p"
  elif head -c1 "$p" >/dev/null 2>&1; then echo "$p"; fi
done"#,
        )
        .arg("sh")
        .args(paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits for `pid` to be gone (or a zombie nobody has reaped yet).
fn assert_dies(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        if stat.is_empty() || state == Some('Z') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) outlived backhaul"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn swept_line(stderr: &str) -> bool {
    stderr.contains("temp path(s) left by killed backhaul runs")
}

fn mongo_source() -> Mongod {
    Mongod::start(MongodOpts {
        auth: Some(("backup", MONGO_PASSWORD)),
        seed: Some(shop_seed("shop")),
        ..Default::default()
    })
}

/// A zip-format mongo backup of `shop` with `mongodump` as the tool.
fn mongo_backup(source: &Mongod, bucket: &str, mongodump: &Path) -> Command {
    let mut cmd = backhaul_std();
    cmd.args(["backup", "--only", "mongo"])
        .env("S3_BUCKET", bucket)
        .env("STAGE", "prod")
        .env("MONGODUMP_PATH", mongodump)
        .env(
            "MONGO_CONNECTION_STRING",
            source.uri(Some(MONGO_USERINFO), "?authSource=admin"),
        )
        .env("MONGO_DB_NAME", "shop")
        .env("MONGO_FORMAT", "zip");
    cmd
}

#[test]
fn mongo_zip_backup_and_restore_temp_paths_are_private() {
    let place = Place::new();
    let source = mongo_source();
    let target = Mongod::start(MongodOpts {
        auth: Some(("backup", MONGO_PASSWORD)),
        seed: Some(serde_json::json!({})),
        ..Default::default()
    });
    let bucket = moto().bucket("atrest-m");

    let dump = place.pausing("mongodump", &mongodump(), true);
    let mut run = place.start(mongo_backup(&source, &bucket, &dump), "backup");
    place.paused(&mut run);
    place.assert_private("mongo zip backup, dump tree written");
    assert!(
        !place.files_containing(&[MONGO_DATA]).is_empty(),
        "the dump tree is there"
    );
    assert!(
        place.files_containing(&["s3cr"]).is_empty(),
        "no password on disk"
    );
    place.resume();
    run.wait_success();

    place.reset_marks();
    let restore = place.pausing("mongorestore", &mongorestore(), false);
    let mut cmd = backhaul_std();
    cmd.args(["restore", "latest", "--kind", "mongo", "--database", "shop"])
        .env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("MONGORESTORE_PATH", &restore)
        .env(
            "RESTORE_TO",
            target.uri(Some(MONGO_USERINFO), "?authSource=admin"),
        );
    let mut run = place.start(cmd, "restore");
    let tool = place.paused(&mut run);
    place.assert_private("mongo restore, zip extracted");
    // The target URL is ours, not the tool's (it gets the connection through its pipe).
    let environ = std::fs::read(format!("/proc/{tool}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("RESTORE_TO=") && !environ.contains("s3cr"),
        "{environ}"
    );
    assert!(
        !place.files_containing(&[MONGO_DATA]).is_empty(),
        "the extracted tree is there"
    );
    assert!(
        place.files_containing(&["s3cr"]).is_empty(),
        "no password on disk"
    );
    place.resume();
    run.wait_success();
    assert_same_database(&target.database("shop"), &source.database("shop"));
    assert!(walk(&place.temp_roots()).is_empty(), "all removed");
}

#[test]
fn sigkill_mid_mongo_zip_backup_leaves_no_child_and_the_next_run_sweeps() {
    let place = Place::new();
    let source = mongo_source();
    let bucket = moto().bucket("atrest-mk");
    let dump = place.pausing("mongodump", &mongodump(), true);
    let mut run = place.start(mongo_backup(&source, &bucket, &dump), "killed");
    let child = place.paused(&mut run);
    run.sigkill();
    assert_dies(child, "mongodump");
    assert!(
        !place.files_containing(&[MONGO_DATA]).is_empty(),
        "a killed run leaves its tree"
    );
    assert!(
        place.files_containing(&["s3cr"]).is_empty(),
        "no password on disk"
    );

    let next = place.start(mongo_backup(&source, &bucket, &mongodump()), "next");
    let stderr_path = next.err.clone();
    next.wait_success();
    let stderr = std::fs::read_to_string(stderr_path).unwrap();
    assert!(swept_line(&stderr), "{stderr}");
    let left = place.files_containing(&[MONGO_DATA, MONGO_PASSWORD, "s3cr%40t"]);
    assert!(left.is_empty(), "{left:?}");
    assert!(walk(&place.temp_roots()).is_empty(), "all removed");
}

/// A cluster whose database `shop` holds [`PG_DATA`], backed up; the tools directory holds
/// the real pg_dump and psql and a pausing pg_restore.
fn pg_restore_setup(place: &Place) -> (Fixture, String) {
    let sql = format!(
        "create table t (id int primary key, v text);
         insert into t select g, '{PG_DATA}-' || g from generate_series(1, 2000) g;"
    );
    let fx = Fixture::builder("atrest-pg")
        .databases(&[("shop", &sql)])
        .start();
    let out = fx.backup("shop").assert().success();
    let key = artifact_key(&out.get_output().stdout);
    for tool in ["pg_dump", "psql"] {
        std::os::unix::fs::symlink(fx.pg.bin.join(tool), place.path("tools").join(tool)).unwrap();
    }
    place.pausing("pg_restore", &fx.pg.bin.join("pg_restore"), false);
    fx.pg.create_db("copy");
    (fx, key)
}

fn restore_jobs(place: &Place, fx: &Fixture, key: &str) -> Command {
    let mut cmd = backhaul_std();
    cmd.args(["restore", key, "--jobs", "2", "--to", &fx.url("copy")])
        .env("S3_BUCKET", &fx.bucket)
        .env("STAGE", "prod")
        .env("PG_DUMP_PATH", place.path("tools").join("pg_dump"));
    cmd
}

/// Waits until the spool holds `needle` (the download runs beside the paused pg_restore).
fn wait_spooled(place: &Place, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while place.files_containing(&[needle]).is_empty() {
        assert!(Instant::now() < deadline, "the spool never held the data");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--to` carries the password (as typed by someone who did not read the warning).
#[test]
fn restore_jobs_spool_is_private_and_the_password_leaves_the_cmdline() {
    let place = Place::new();
    let (fx, key) = pg_restore_setup(&place);
    let mut run = place.start(restore_jobs(&place, &fx, &key), "restore");
    place.paused(&mut run);
    wait_spooled(&place, PG_DATA);
    place.assert_private("restore --jobs, spool written");

    let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let encoded =
        percent_encoding::utf8_percent_encode(APP_PASSWORD, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    assert!(!cmdline.contains(&encoded), "{cmdline}");
    let blanked = format!("--to postgresql://app:{}@", "x".repeat(encoded.len()));
    assert!(cmdline.contains(&blanked), "{cmdline}");
    place.resume();
    let err = run.err.clone();
    run.wait_success();
    let stderr = std::fs::read_to_string(err).unwrap();
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("--to holds a password"))
        .collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(warned[0].contains("set RESTORE_TO instead"), "{stderr}");
    assert_eq!(fx.pg.psql("copy", "select count(*) from t").trim(), "2000");
    assert!(walk(&place.temp_roots()).is_empty(), "all removed");
}

#[test]
fn sigkill_mid_restore_jobs_leaves_no_child_and_the_next_run_sweeps() {
    let place = Place::new();
    let (fx, key) = pg_restore_setup(&place);
    let mut run = place.start(restore_jobs(&place, &fx, &key), "killed");
    let child = place.paused(&mut run);
    wait_spooled(&place, PG_DATA);
    run.sigkill();
    assert_dies(child, "pg_restore");
    assert!(
        !place.files_containing(&[PG_DATA]).is_empty(),
        "a killed run leaves its spool"
    );

    let mut cmd = backhaul_std();
    cmd.args(["list"])
        .env("S3_BUCKET", &fx.bucket)
        .env("STAGE", "prod");
    let next = place.start(cmd, "next");
    let stderr_path = next.err.clone();
    next.wait_success();
    let stderr = std::fs::read_to_string(stderr_path).unwrap();
    assert!(swept_line(&stderr), "{stderr}");
    assert!(place.files_containing(&[PG_DATA]).is_empty());
    assert!(walk(&place.temp_roots()).is_empty(), "all removed");
}

#[test]
fn sigkill_mid_pg_dump_leaves_no_pg_dump() {
    let place = Place::new();
    let fx = Fixture::start("atrest-dump");
    let pid_file = place.path("marks").join("dump.pid");
    let mut cmd = backhaul_std();
    cmd.arg("backup")
        .env("S3_BUCKET", &fx.bucket)
        .env("STAGE", "prod")
        .env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_PORT", fx.pg.port.to_string())
        .env("PG_DB_USER", "app")
        .env("PG_DB_PASSWORD", &fx.password)
        .env("PG_DB_NAME", "app")
        .env("PG_DUMP_PATH", tests_dir().join("fixtures/pg_dump_hangs"))
        .env("REAL_PG_DUMP", fx.pg.bin.join("pg_dump"))
        .env("HANG_AFTER_BYTES", "1000")
        .env("PID_FILE", &pid_file);
    let mut run = place.start(cmd, "backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            break p;
        }
        assert!(run.child.try_wait().unwrap().is_none(), "{}", run.stderr());
        assert!(Instant::now() < deadline, "pg_dump never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    run.sigkill();
    assert_dies(pid, "pg_dump");
}

/// `schedule --secret` takes references only: a pasted password (a valid SSM parameter name
/// too) is refused after one DescribeParameters (metadata only), and nothing is registered;
/// the name of a parameter that exists is accepted. Every request passes the contract check.
#[test]
fn schedule_secret_must_name_an_existing_ssm_parameter() {
    use crate::ecs::{create_cluster, ecs, schedule, stage};
    let stage = stage("refonly");
    let family = format!("backhaul-{stage}");
    create_cluster(&family);
    let rec = Contract::start();
    let pasted = "Sup3rS3cretPassw0rd";
    let out = schedule(&rec, &stage)
        .args(["--secret", &format!("PG_DB_PASSWORD={pasted}")])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: --secret PG_DB_PASSWORD=<value> is not the name of an SSM parameter in us-east-1"),
        "{err}"
    );
    assert!(!err.contains(pasted) && out.stdout.is_empty(), "{err}");
    let families = block_on(
        ecs()
            .list_task_definition_families()
            .family_prefix(&family)
            .send(),
    )
    .unwrap();
    assert!(families.families().is_empty(), "nothing registered");

    let name = format!("/{stage}/pg-password");
    let ssm = aws_sdk_ssm::Client::new(&moto().sdk_config());
    block_on(
        ssm.put_parameter()
            .name(&name)
            .value("not-read-by-backhaul")
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send(),
    )
    .unwrap();
    schedule(&rec, &stage)
        .args(["--secret", &format!("PG_DB_PASSWORD={name}")])
        .assert()
        .success();
    let td = block_on(
        ecs()
            .describe_task_definition()
            .task_definition(&family)
            .send(),
    )
    .unwrap();
    let secrets = td.task_definition().unwrap().container_definitions()[0].secrets();
    assert!(
        secrets
            .iter()
            .any(|s| s.name() == "PG_DB_PASSWORD" && s.value_from() == name),
        "{secrets:?}"
    );
    rec.check(&["ssm:DescribeParameters", "ecs:RegisterTaskDefinition"]);
    let lookups = rec.bodies("DescribeParameters");
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    assert!(
        rec.bodies("GetParameter").is_empty(),
        "the value is never read"
    );
}

/// A killed run's leftover that this user cannot remove (here: handed to `nobody`, with a
/// directory of root's inside) is named by `status`, run as that user.
#[test]
fn status_names_leftovers_it_cannot_remove() {
    let place = Place::new();
    let (fx, key) = pg_restore_setup(&place);
    let mut run = place.start(restore_jobs(&place, &fx, &key), "killed");
    let child = place.paused(&mut run);
    run.sigkill();
    assert_dies(child, "pg_restore");
    let left = walk(&[place.path("tmp")])
        .into_iter()
        .find(|p| p.parent() == Some(place.path("tmp").as_path()))
        .expect("the killed run's spool dir");
    std::fs::create_dir(left.join("sub")).unwrap();
    std::fs::write(left.join("sub/archive.dump"), "x").unwrap();
    std::os::unix::fs::chown(&left, Some(65534), Some(65534)).unwrap();

    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(assert_cmd::cargo::cargo_bin("backhaul"))
        .args(["status", "--stage", "leftover", "--json"])
        .env_clear()
        .envs(base_env())
        .envs(moto_env())
        .env("TMPDIR", place.path("tmp"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stale = st["stale_temp_paths"].as_array().expect("stale_temp_paths");
    assert_eq!(stale.len(), 1, "{st}");
    assert!(
        stale[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}: ", left.display())),
        "{st}"
    );
    assert!(left.join("sub/archive.dump").exists());
}
