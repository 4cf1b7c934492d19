//! The suite's MongoDB: `tests/mongod/server.py` (a wire-protocol server holding real BSON)
//! on a free port, one per test, seeded from extended JSON, and the real Database Tools from
//! `../shared/mongo-tools`. The server writes its whole state to a file after every write, so
//! a test compares restored documents and indexes exactly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use super::{tests_dir, venv};

/// The real mongodump/mongorestore: `$CARGO_MANIFEST_DIR/../shared/mongo-tools` (CI lays
/// shared/ beside the clone), else /work/shared/mongo-tools.
pub fn tools_dir() -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/mongo-tools");
    let dir = if beside.join("mongodump").exists() {
        beside
    } else {
        PathBuf::from("/work/shared/mongo-tools")
    };
    assert!(
        dir.join("mongodump").exists() && dir.join("mongorestore").exists(),
        "the real MongoDB Database Tools belong in ../shared/mongo-tools (see its README)"
    );
    dir
}

pub fn mongodump() -> PathBuf {
    tools_dir().join("mongodump")
}

pub fn mongorestore() -> PathBuf {
    tools_dir().join("mongorestore")
}

pub struct Mongod {
    pub port: u16,
    child: Child,
    dir: TempDir,
}

#[derive(Default)]
pub struct MongodOpts<'a> {
    /// `(user, password)`: logins are checked (SCRAM), every other command needs one.
    pub auth: Option<(&'a str, &'a str)>,
    /// The database the user is defined in (default `admin`).
    pub auth_db: Option<&'a str>,
    /// More users beside `auth` (same database), in admin.system.users as mongod keeps them.
    pub more_users: &'a [(&'a str, &'a str)],
    /// Extended JSON: `{db: {collection: {"documents": [...], "indexes": [...]}}}`.
    pub seed: Option<Value>,
}

impl Mongod {
    pub fn start(opts: MongodOpts) -> Mongod {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(tests_dir().join("mongod/server.py"))
            .arg("--state-file")
            .arg(dir.path().join("state.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(seed) = &opts.seed {
            let path = dir.path().join("seed.json");
            std::fs::write(&path, serde_json::to_vec(seed).unwrap()).unwrap();
            cmd.arg("--seed").arg(path);
        }
        for (user, password) in opts.auth.iter().chain(opts.more_users) {
            cmd.args(["--user", user, "--password", password]);
        }
        if let Some(db) = opts.auth_db {
            cmd.args(["--auth-db", db]);
        }
        let mut child = cmd
            .spawn()
            .expect("python from the venv (scripts/setup.sh)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("test mongod did not start: {line:?}"));
        Mongod { port, child, dir }
    }

    pub fn seeded(seed: Value) -> Mongod {
        Mongod::start(MongodOpts {
            seed: Some(seed),
            ..Default::default()
        })
    }

    /// `mongodb://[user:password@]127.0.0.1:<port>/<path>` (path may hold `?options`).
    pub fn uri(&self, userinfo: Option<&str>, path: &str) -> String {
        match userinfo {
            Some(u) => format!("mongodb://{u}@127.0.0.1:{}/{path}", self.port),
            None => format!("mongodb://127.0.0.1:{}/{path}", self.port),
        }
    }

    /// Everything the server holds, as canonical extended JSON.
    pub fn state(&self) -> Value {
        let raw = std::fs::read(self.dir.path().join("state.json")).unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    /// One database's collections (`Null` when it does not exist).
    pub fn database(&self, db: &str) -> Value {
        self.state().get(db).cloned().unwrap_or(Value::Null)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mongod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a restore must bring back of one collection: documents in order and the indexes.
/// Collection options are compared too.
pub fn assert_same_database(restored: &Value, original: &Value) {
    let (Some(r), Some(o)) = (restored.as_object(), original.as_object()) else {
        panic!("missing database: restored {restored}, original {original}");
    };
    assert_eq!(
        r.keys().collect::<Vec<_>>(),
        o.keys().collect::<Vec<_>>(),
        "collections"
    );
    for (name, coll) in o {
        assert_eq!(
            r[name]["documents"], coll["documents"],
            "documents of {name}"
        );
        assert_eq!(r[name]["indexes"], coll["indexes"], "indexes of {name}");
        assert_eq!(r[name]["options"], coll["options"], "options of {name}");
    }
}

/// A seed with the types a dump must keep: ObjectId, int32/int64/double, dates, binary,
/// nested documents and arrays; a unique and a compound index; a dotted collection name and
/// an empty collection.
pub fn shop_seed(db: &str) -> Value {
    let users: Vec<Value> = (0..40)
        .map(|i| {
            serde_json::json!({
                "_id": {"$oid": format!("65a0000000000000000000{i:02x}")},
                "email": format!("user{i}@example.com"),
                "name": format!("Üser №{i}"),
                "age": {"$numberInt": (20 + i).to_string()},
                "balance": {"$numberLong": (1_000_000_000_000i64 + i).to_string()},
                "score": {"$numberDouble": format!("{}.5", i)},
                "active": i % 2 == 0,
                "joined": {"$date": {"$numberLong": (1_700_000_000_000i64 + i * 1000).to_string()}},
                "avatar": {"$binary": {"base64": "AAECAwQ=", "subType": "00"}},
                "address": {"city": "Lyon", "zip": {"$numberInt": "69001"}},
                "tags": ["a", {"$numberInt": i.to_string()}, null],
            })
        })
        .collect();
    let orders: Vec<Value> = (0..120)
        .map(|i| {
            serde_json::json!({
                "_id": {"$numberInt": i.to_string()},
                "user": {"$oid": format!("65a0000000000000000000{:02x}", i % 40)},
                "items": [{"sku": format!("sku-{i}"), "qty": {"$numberInt": "2"}}],
            })
        })
        .collect();
    serde_json::json!({
        db: {
            "users": {
                "documents": users,
                "indexes": [{"key": {"email": {"$numberInt": "1"}}, "name": "email_1", "unique": true}],
            },
            "orders": {
                "documents": orders,
                "indexes": [{"key": {"user": {"$numberInt": "1"}, "_id": {"$numberInt": "-1"}}, "name": "user_1__id_-1"}],
            },
            "events.2024.q1": {"documents": [{"_id": "e1", "kind": "login"}, {"_id": "e2", "kind": "logout"}]},
            "empty": {"documents": []},
        }
    })
}

/// A wrapper around a real tool that logs each call to `log` (`call <tool>`, `arg <a>` lines,
/// and `config <path> <mode> <file type> <keys…>` for the `--config`), then runs the tool. A
/// config read from a pipe is handed on through a fresh one, so the tool still reads it.
pub fn spy(dir: &Path, real: &Path, log: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let name = real.file_name().unwrap().to_string_lossy().into_owned();
    let p = dir.join(&name);
    let script = format!(
        r#"#!/bin/bash
log='{log}'
echo "call {name}" >> "$log"
prev=""
args=()
for a in "$@"; do
  echo "arg $a" >> "$log"
  if [ "$prev" = --config ]; then
    info="$(stat -L -c '%a %F' "$a")"
    text="$(cat "$a")"
    echo "config $a $info $(printf '%s\n' "$text" | cut -d: -f1 | tr '\n' ' ')" >> "$log"
    exec {{fd}}< <(printf '%s\n' "$text")
    a="/dev/fd/$fd"
  fi
  args+=("$a")
  prev="$a"
done
exec '{real}' "${{args[@]}}"
"#,
        log = log.display(),
        real = real.display()
    );
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}
