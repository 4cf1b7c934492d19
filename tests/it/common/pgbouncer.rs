//! A real PgBouncer (Debian's package, /usr/sbin/pgbouncer) in front of a test cluster, on a
//! free port, in its own temp dir; stopped on drop. It refuses to run as root, so it runs as
//! the `postgres` user as the cluster does (with the same parent-death signal).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{as_pg_user, chown_pg, free_port, Pg};

pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per transaction: session state (SET, set_config) outlives its
    /// client and goes to the next one.
    Transaction,
    /// A server connection per client, reset (`DISCARD ALL`) when the client leaves.
    Session,
}

pub struct PgBouncer {
    pub port: u16,
    pub dir: TempDir,
    child: Child,
}

impl PgBouncer {
    /// Every database of `pg` through PgBouncer as `user`/`password` (SCRAM to the client and
    /// to the server, from the plain password in its auth_file). `pool_size` server
    /// connections per database and user, handed out last-in first-out
    /// (`server_round_robin=0`): with 1, a new client certainly gets the previous client's
    /// server connection.
    pub fn start(pg: &Pg, mode: PoolMode, pool_size: u32, user: &str, password: &str) -> Self {
        assert!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: apt-get install pgbouncer (scripts/setup.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("backhaul-pgbouncer-")
            .tempdir()
            .unwrap();
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let users = dir.path().join("users.txt");
        std::fs::write(&users, format!("{} {}\n", quote(user), quote(password))).unwrap();
        std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let port = free_port();
        let mode = match mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]
* = host=127.0.0.1 port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = {mode}
server_round_robin = 0
default_pool_size = {pool_size}
max_client_conn = 50
logfile = {log}
pidfile =
",
                pg_port = pg.port,
                users = users.display(),
                log = dir.path().join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        chown_pg(dir.path());
        let mut cmd = Command::new(PGBOUNCER);
        cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
        as_pg_user(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut bouncer = PgBouncer { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                panic!("pgbouncer exited with {status}: {}", bouncer.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgbouncer.log")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SIGTERM is PgBouncer's immediate shutdown.
        super::stop_child(&mut self.child, libc::SIGTERM);
    }
}
