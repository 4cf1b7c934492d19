//! What a person at a terminal meets: clear one-line errors at the edges, short backup ids,
//! and (on a pty) human lines instead of JSON.

use crate::common::{artifact_key, Fixture};
use crate::common::{backhaul, backhaul_moto};

fn one_line_error(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Bare `verify` says what it needs (not a garbled "KEY pass exactly one of"), before asking
/// for a bucket; a key and --since together are refused as such.
#[test]
fn bare_verify_says_what_it_needs() {
    let out = backhaul()
        .arg("verify")
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert_eq!(
        err,
        "error: verify needs the backups to check: an id from `backhaul list`, a key, `latest`, or --since <duration> (e.g. `backhaul verify latest --stage prod`)"
    );
    let out = backhaul_moto()
        .args(["verify", "latest", "--since", "7d", "--stage", "prod"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert!(err.contains("not both"), "{err}");
}

/// A target database that does not exist: the restore says how to create it (no psql FATAL
/// line), and nothing is created.
#[test]
fn restore_into_a_missing_database_says_how_to_create_it() {
    let f = Fixture::start("missingdb");
    let out = f.backup("app").assert().success().get_output().clone();
    let key = artifact_key(&out.stdout);
    let out = f
        .cmd()
        .args(["restore", &key])
        .env("RESTORE_TO", f.url("nowhere"))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert_eq!(
        err,
        format!(
            "error: target database \"nowhere\" does not exist: create it first, e.g. `createdb -h 127.0.0.1 -p {} -U app nowhere` (a role with CREATEDB), then run the restore again",
            f.pg.port
        )
    );
    assert!(
        !err.contains("FATAL") && !err.contains(&f.password),
        "{err}"
    );
    assert_eq!(
        f.pg.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'nowhere'"
        ),
        "0"
    );
}

fn stdout_of(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

/// `list` shows an id per backup; `restore`, `verify` and `list` take that id, a key
/// timestamp with --database, the full key or `latest`; a timestamp that fits two backups is
/// refused listing both.
#[test]
fn short_ids_from_list_work_for_restore_verify_and_list() {
    let f = Fixture::builder("shortids")
        .databases(&[
            ("app", crate::common::FIXTURE_SQL),
            (
                "audit",
                "create table a (x int); insert into a values (1), (2)",
            ),
        ])
        .start();
    f.pg.create_db("app_copy");
    f.pg.create_db("app_copy2");
    f.pg.psql("app_copy", "alter database app_copy owner to app");
    f.pg.psql("app_copy2", "alter database app_copy2 owner to app");
    f.backup("app,audit").assert().success();

    // The table: an ID column first, one id per row; JSON carries the same id.
    let table = stdout_of(f.cmd().arg("list"));
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("ID  "), "{table}");
    let rows: Vec<serde_json::Value> = stdout_of(f.cmd().args(["list", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let app = rows.iter().find(|r| r["database"] == "app").unwrap();
    let id = app["id"].as_str().unwrap().to_string();
    let key = app["key"].as_str().unwrap().to_string();
    let ts = app["timestamp"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 8);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(table.contains(&format!("{id}  {ts}")), "{table}");
    let ids: std::collections::HashSet<&str> =
        rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    // Stable: the same key lists with the same id again.
    assert!(stdout_of(f.cmd().arg("list")).contains(&id));

    // `list <id>` and `list <timestamp>`.
    let one = stdout_of(f.cmd().args(["list", &id, "--json"]));
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains(&key), "{one}");
    assert_eq!(
        stdout_of(f.cmd().args(["list", &ts, "--json"]))
            .lines()
            .count(),
        2
    );

    // restore <id from list>: the data arrives.
    let restored = f
        .cmd()
        .args(["restore", &id])
        .env("RESTORE_TO", f.url("app_copy"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let line = crate::common::summaries(&restored).pop().unwrap();
    assert_eq!(line["key"], key.as_str());
    same_as_app(&f, "app_copy");

    // A shorter prefix of the id works too (upper case as well).
    let out = f
        .cmd()
        .args(["verify", &id[..6].to_ascii_uppercase()])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = crate::common::summaries(&out).pop().unwrap();
    assert_eq!(v["key"], key.as_str(), "{v}");

    // A timestamp names the run: alone it fits both databases (exit 2, both listed) ...
    let out = f
        .cmd()
        .args(["restore", &ts])
        .env("RESTORE_TO", f.url("app_copy2"))
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert!(err.contains("matches 2 backups"), "{err}");
    for r in &rows {
        assert!(
            err.contains(&format!(
                "{} {}",
                r["id"].as_str().unwrap(),
                r["key"].as_str().unwrap()
            )),
            "{err}"
        );
    }
    assert_eq!(
        f.pg.psql(
            "app_copy2",
            "select count(*) from pg_class where relname = 'people'"
        ),
        "0",
        "nothing restored"
    );
    // ... with --database, one.
    f.cmd()
        .args(["restore", &ts, "--database", "app"])
        .env("RESTORE_TO", f.url("app_copy2"))
        .assert()
        .success();
    same_as_app(&f, "app_copy2");

    // An id that names nothing: not found (exit 1), one line.
    let out = f
        .cmd()
        .args(["verify", "0000ffff0000"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert!(err.contains("no backup matches 0000ffff0000"), "{err}");
}

/// `db`'s plain `pg_dump` equals `app`'s. `plain_dump` masks each database's own name; the
/// role `app` owns both, and `app`'s dump masks it as well, so the copy's is masked the same.
fn same_as_app(f: &Fixture, db: &str) {
    let copy = crate::common::plain_dump(&f.pg, db).replace("app", "<db>");
    assert_eq!(crate::common::plain_dump(&f.pg, "app"), copy, "{db}");
}

/// An id prefix two backups share is refused, listing both with their ids and keys.
#[test]
fn an_ambiguous_id_lists_the_matches() {
    use sha2::{Digest, Sha256};
    let bucket = crate::common::moto().bucket("ambiguous");
    // Two keys in the layout whose ids share their first 4 characters.
    let key = |i: u32| {
        let ts = format!("2024-01-{:02}_00h00m{:02}s", 1 + i / 60 % 28, i % 60);
        format!("prod/{ts}_PGSQL/backup_prod_db{i}_{ts}.dump")
    };
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..100_000)
        .find_map(|i| {
            let k = key(i);
            let p = hex::encode(Sha256::digest(k.as_bytes()))[..4].to_string();
            seen.insert(p, k.clone()).map(|other| (other, k))
        })
        .unwrap();
    for k in [&a, &b] {
        crate::common::moto().put(&bucket, k, b"PGDMP".to_vec());
    }
    let prefix = &hex::encode(Sha256::digest(a.as_bytes()))[..4];
    let out = crate::common::store_cmd(&bucket)
        .args(["restore", prefix, "--to", "postgresql://u@127.0.0.1:1/x"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = one_line_error(&out);
    assert!(
        err.contains(&format!("\"{prefix}\" matches 2 backups")),
        "{err}"
    );
    assert!(err.contains(&a) && err.contains(&b), "{err}");
}
