//! The test harness: a throwaway PostgreSQL cluster per test, one moto_server per test
//! binary, S3 helpers through the real SDK, and a `backhaul` command with a clean environment.
//!
//! PostgreSQL refuses to run as root, so when tests run as root (CI) the server and initdb
//! are started as the `postgres` system user that Debian's package creates.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod contract;
mod fixture;
pub mod mongod;
pub mod pgbouncer;
pub mod proxy;

pub use fixture::*;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// Newest PostgreSQL server binaries installed from Debian's packages.
pub fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server packages are installed (apt-get install postgresql)")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// Runs a command as the `postgres` user when we are root, with a parent-death signal so a
/// crashed test binary does not leave servers behind.
fn as_pg_user(cmd: &mut Command) {
    // SAFETY: geteuid/getpwnam are async-signal-safe enough here (called before fork); the
    // pre_exec closure only calls setgid/setuid/prctl.
    let ids = unsafe {
        if libc::geteuid() != 0 {
            None
        } else {
            let pw = libc::getpwnam(c"postgres".as_ptr());
            assert!(
                !pw.is_null(),
                "running as root needs the postgres system user (apt-get install postgresql)"
            );
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    };
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn chown_pg(path: &Path) {
    if unsafe { libc::geteuid() } == 0 {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// An initdb'd data directory made once per machine and copied per test (initdb is slow).
fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let bin = pg_bin_dir();
        let major = bin
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let dir = base.join(format!("pg-template-{major}-v2"));
        if dir.join("PG_VERSION").exists() {
            return dir;
        }
        let tmp = base.join(format!("pg-template-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755)).ok();
        chown_pg(&tmp);
        let mut cmd = Command::new(bin.join("initdb"));
        cmd.args(["-D"]).arg(&tmp).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]);
        cmd.stdout(Stdio::null());
        as_pg_user(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => {}
            Err(_) => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        dir
    })
}

/// A running PostgreSQL cluster, stopped and deleted on drop.
pub struct Pg {
    pub dir: TempDir,
    pub port: u16,
    pub bin: PathBuf,
    child: Child,
}

impl Pg {
    pub fn start() -> Pg {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("backhaul-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data = dir.path().join("data");
        let st = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success());
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        chown_pg(dir.path());
        let port = free_port();
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sock);
        for opt in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "full_page_writes=off",
            "synchronous_commit=off",
            "max_connections=40",
            "shared_buffers=32MB",
        ] {
            cmd.args(["-c", opt]);
        }
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
        as_pg_user(&mut cmd);
        let child = cmd.spawn().unwrap();
        let pg = Pg {
            dir,
            port,
            bin,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(pg.bin.join("pg_isready"))
                .args(["-q", "-h"])
                .arg(pg.sock())
                .args(["-p", &port.to_string()])
                .status()
                .unwrap()
                .success();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Runs SQL as the superuser over the unix socket; returns unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(self.sock())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("create database \"{name}\""));
    }

    /// A login role for TCP connections (scram), able to dump anything.
    pub fn create_user(&self, name: &str, password: &str) {
        let pw = password.replace('\'', "''");
        self.psql(
            "postgres",
            &format!("create role \"{name}\" login superuser password '{pw}'"),
        );
    }

    /// Per-table row count and content digest, plus sequence values: what "equal databases" means.
    pub fn fingerprint(&self, db: &str) -> BTreeMap<String, String> {
        let tables = self.psql(
            db,
            "select tablename from pg_tables where schemaname='public' order by 1",
        );
        let mut out = BTreeMap::new();
        for t in tables.lines().filter(|l| !l.is_empty()) {
            let v = self.psql(db, &format!("select count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' order by x::text), '')) from \"{t}\" x"));
            out.insert(format!("table {t}"), v);
        }
        for s in self
            .psql(
                db,
                "select sequencename from pg_sequences where schemaname='public' order by 1",
            )
            .lines()
            .filter(|l| !l.is_empty())
        {
            out.insert(
                format!("sequence {s}"),
                self.psql(db, &format!("select last_value from \"{s}\"")),
            );
        }
        for v in self
            .psql(
                db,
                "select viewname from pg_views where schemaname='public' order by 1",
            )
            .lines()
            .filter(|l| !l.is_empty())
        {
            out.insert(
                format!("view {v}"),
                self.psql(db, &format!("select count(*) from \"{v}\"")),
            );
        }
        out
    }

    /// Restores a custom-format archive into a fresh database with the server's own pg_restore.
    pub fn pg_restore_file(&self, archive: &Path, db: &str) {
        self.create_db(db);
        let out = Command::new(self.bin.join("pg_restore"))
            .args(["--exit-on-error", "-U", "postgres", "-h"])
            .arg(self.sock())
            .args(["-p", &self.port.to_string(), "-d", db])
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's "fast shutdown".
        stop_child(&mut self.child, libc::SIGINT);
    }
}

/// Asks a server the suite started to shut down with `signal`, waits up to 10 s, then kills it.
pub fn stop_child(child: &mut std::process::Child, signal: libc::c_int) {
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A database with the column types people actually use: bytea, jsonb, unicode text, numeric,
/// nulls, arrays, a sequence, a foreign key and a view.
pub const FIXTURE_SQL: &str = r#"
create table people (id serial primary key, name text not null, bio text, born date, balance numeric(12,2),
  tags text[], meta jsonb, avatar bytea, created timestamptz not null default '2024-01-01 00:00:00+00');
insert into people (name, bio, born, balance, tags, meta, avatar)
  select '名前 ' || g, case when g % 3 = 0 then null else repeat('ü∑ß—🦀 ', g % 50) end, date '1970-01-01' + g,
         (g * 1.37)::numeric(12,2), array['a' || g, 'b'], jsonb_build_object('k', g, 'nested', jsonb_build_object('emoji', '🦀', 'n', g * 0.5)),
         decode(md5(g::text), 'hex') || '\x00ff'::bytea
  from generate_series(1, 3000) g;
create sequence invoice_no start 1000;
select setval('invoice_no', 4242);
create table orders (id bigint primary key default nextval('invoice_no'), person int references people(id), total numeric, note text);
insert into orders (person, total, note) select (g % 3000) + 1, g * 0.01, case when g % 7 = 0 then 'rush' end from generate_series(1, 8000) g;
create view rich as select name, balance from people where balance > 100;
create table empty_table (x int);
"#;

/// A moto_server shared by all tests of this binary (its state is in memory; tests use unique
/// names). Killed when the test binary exits.
pub struct Moto {
    pub endpoint: String,
    _child: Child,
}

pub fn moto() -> &'static Moto {
    static M: OnceLock<Moto> = OnceLock::new();
    M.get_or_init(|| {
        let exe = std::env::var("MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|_| {
            let venv = venv().join("bin/moto_server");
            if venv.exists() { venv } else { PathBuf::from("moto_server") }
        });
        let port = free_port();
        // A watchdog shell ends moto when this test process exits (PR_SET_PDEATHSIG would fire
        // when the spawning test *thread* ends, not the process).
        let script = format!(
            "\"$0\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; while kill -0 {pid} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null",
            pid = std::process::id()
        );
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script).arg(&exe).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {} ({e}); pip install 'moto[server]>=5.2.5'", exe.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { endpoint: format!("http://127.0.0.1:{port}"), _child: child }
    })
}

impl Moto {
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&self.endpoint)
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    "test", "test", None, None, "tests",
                ))
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
                .load(),
        )
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk_config())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// A fresh bucket with a unique name.
    pub fn bucket(&self, hint: &str) -> String {
        self.create_bucket(hint, false)
    }

    /// A bucket with Object Lock enabled (only possible at creation).
    pub fn locked_bucket(&self, hint: &str) -> String {
        self.create_bucket(hint, true)
    }

    fn create_bucket(&self, hint: &str, object_lock: bool) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("bh-{hint}-{}-{n}", std::process::id());
        let req = self.s3().create_bucket().bucket(&name);
        let req = if object_lock {
            req.object_lock_enabled_for_bucket(true)
        } else {
            req
        };
        block_on(req.send()).unwrap();
        name
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let s3 = self.s3();
        block_on(async {
            let mut out = Vec::new();
            let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
            while let Some(p) = pages.next().await {
                out.extend(
                    p.unwrap()
                        .contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
            }
            out.sort();
            out
        })
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let s3 = self.s3();
        block_on(async {
            s3.get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .to_vec()
        })
    }

    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let s3 = self.s3();
        block_on(async {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .unwrap()
        });
    }

    pub fn multipart_uploads(&self, bucket: &str) -> usize {
        let s3 = self.s3();
        block_on(async {
            s3.list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap()
                .uploads()
                .len()
        })
    }

    /// Parts uploaded so far, over every incomplete multipart upload in `bucket`.
    pub fn multipart_parts(&self, bucket: &str) -> usize {
        let s3 = self.s3();
        block_on(async {
            let uploads = s3
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let mut parts = 0;
            for u in uploads.uploads() {
                let listed = s3
                    .list_parts()
                    .bucket(bucket)
                    .key(u.key().unwrap_or_default())
                    .upload_id(u.upload_id().unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
                parts += listed.parts().len();
            }
            parts
        })
    }
}

/// The environment every test run of backhaul starts from: nothing from the developer's shell
/// (AWS profiles, PG* variables) leaks in.
pub fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", std::env::temp_dir().display().to_string()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_MAX_ATTEMPTS", "1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("BACKHAUL_LOG_FORMAT", "json".into()),
        // Tests that count artifacts predate the globals artifact; tests/it/restore_faithful.rs
        // turns it on.
        ("BACKUP_GLOBALS", "off".into()),
    ]
}

pub fn backhaul() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("backhaul").unwrap();
    cmd.env_clear()
        .envs(base_env())
        .timeout(Duration::from_secs(300));
    cmd
}

/// `backhaul` pointed at moto.
pub fn backhaul_moto() -> assert_cmd::Command {
    let mut cmd = backhaul();
    cmd.envs(moto_env());
    cmd
}

pub fn moto_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto().endpoint.clone()),
        ("S3_FORCE_PATH_STYLE", "true".into()),
    ]
}

/// A std `Command` for tests that must signal the process themselves.
pub fn backhaul_std() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("backhaul"));
    cmd.env_clear().envs(base_env()).envs(moto_env());
    cmd
}

/// The environment a team's task definition sets for a PostgreSQL backup, pointed at `pg`.
pub fn pg_env(cmd: &mut assert_cmd::Command, pg: &Pg, user: &str, password: &str, dbs: &str) {
    cmd.env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_PORT", pg.port.to_string())
        .env("PG_DB_USER", user)
        .env("PG_DB_PASSWORD", password)
        .env("PG_DB_NAME", dbs);
}

/// Parses the JSON summary lines backhaul prints on stdout.
pub fn summaries(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The Python venv scripts/setup.sh creates (moto, boto3, cfn-lint).
pub fn venv() -> PathBuf {
    PathBuf::from(std::env::var("BACKHAUL_VENV").unwrap_or_else(|_| "/opt/backhaul-venv".into()))
}

/// Path of a file under tests/.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// What a pg_dump-family tool of `pg` prints, run as `postgres` over the socket, without
/// pg_dump's random `\restrict` / `\unrestrict` lines.
pub fn dump_text(pg: &Pg, tool: &str, args: &[&str]) -> String {
    let out = Command::new(pg.bin.join(tool))
        .args(["-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `pg_dump` plain output of `db`, owners and ACLs kept, with what varies between databases
/// masked (the database's name, the `\restrict` line): equal outputs are equal databases.
pub fn plain_dump(pg: &Pg, db: &str) -> String {
    dump_text(pg, "pg_dump", &[db])
        .lines()
        .map(|l| l.replace(db, "<db>"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits up to `limit` until the server has no session of backhaul's (application `backhaul`)
/// that also matches `filter` (an SQL condition on `pg_stat_activity`); fails naming them.
pub fn wait_no_backhaul_session(pg: &Pg, filter: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = pg.psql(
            "postgres",
            &format!("select coalesce(string_agg(pid || ' ' || state || ' ' || left(query, 40), '; '), '') from pg_stat_activity where application_name = 'backhaul' and pid <> pg_backend_pid() and ({filter})"),
        );
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backhaul sessions still on the server after {limit:?}: {left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
