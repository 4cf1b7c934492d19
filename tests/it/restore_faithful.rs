//! Faithful restore (issue 14): owners, grants, default privileges, policies, large-object
//! owners and role memberships come back as they were, compared with `pg_dump` output of the
//! original; a cluster without the roles is refused before anything changes, and the roles
//! saved beside every backup (`restore-globals`) fix that.

use std::process::Command;

use crate::common::*;

const PASSWORD: &str = "backup-pw";

/// Roles of the source cluster (cluster-wide, so run in `postgres`).
const ROLES_SQL: &str = r#"
create role app_owner nologin;
create role "Report Owner" nologin;
create role readers nologin;
create role writer login password 'w-secret';
create role analyst login password 'a-secret' in role readers;
grant readers to writer;
alter role analyst set work_mem = '8MB';
"#;

/// The schema: several non-superuser owners, table and column grants, a revoked privilege,
/// PUBLIC grants and revokes, default privileges, RLS with a policy, a grant made by a
/// non-owner (WITH GRANT OPTION), and a large object with an owner and a grant.
const SCHEMA_SQL: &str = r#"
create schema app authorization app_owner;
create schema reports authorization "Report Owner";
set role app_owner;
create table app.accounts (id int primary key, name text, secret text);
insert into app.accounts select g, 'n' || g, 's' || g from generate_series(1,100) g;
create view app.public_accounts as select id, name from app.accounts;
create function app.touch() returns int language sql as 'select 1';
alter table app.accounts enable row level security;
create policy own_rows on app.accounts for select to readers using (id > 10);
grant usage on schema app to readers;
grant select (id, name) on app.accounts to readers;
grant select, insert, update on app.accounts to writer;
revoke delete on app.accounts from app_owner;
grant select on app.public_accounts to public;
revoke execute on function app.touch() from public;
grant execute on function app.touch() to analyst;
alter default privileges in schema app grant select on tables to readers;
alter default privileges for role app_owner revoke execute on functions from public;
reset role;
set role "Report Owner";
create table reports.daily (d date, n int);
grant usage on schema reports to analyst;
insert into reports.daily values ('2024-01-01', 3);
grant select on reports.daily to analyst with grant option;
reset role;
set role analyst;
grant select on reports.daily to writer;
reset role;
select lo_from_bytea(424242, 'large object bytes');
alter large object 424242 owner to writer;
grant select on large object 424242 to analyst;
"#;

fn source_cluster() -> Pg {
    let pg = Pg::start();
    pg.create_user("backup", PASSWORD);
    pg.psql("postgres", ROLES_SQL);
    pg.create_db("faithful");
    pg.psql("faithful", SCHEMA_SQL);
    pg
}

fn url(pg: &Pg, user: &str, password: &str, db: &str) -> String {
    format!("postgresql://{user}:{password}@127.0.0.1:{}/{db}", pg.port)
}

fn globals_dump(pg: &Pg) -> String {
    dump_text(pg, "pg_dumpall", &["--globals-only"])
}

/// What plain tools give: `pg_dump -Fc | pg_restore` (owners and ACLs kept).
fn native_copy(pg: &Pg, from: &str, to: &str) {
    pg.create_db(to);
    let dump = Command::new(pg.bin.join("pg_dump"))
        .args(["-Fc", "-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string(), from])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let file = pg.dir.path().join("native.dump");
    std::fs::write(&file, dump.stdout).unwrap();
    let out = Command::new(pg.bin.join("pg_restore"))
        .args(["--exit-on-error", "-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string(), "-d", to])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn backup(
    pg: &Pg,
    bucket: &str,
    user: &str,
    password: &str,
    globals: &str,
) -> Vec<serde_json::Value> {
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, pg, user, password, "faithful");
    cmd.env("S3_BUCKET", bucket)
        .env("STAGE", "prod")
        .env("BACKUP_GLOBALS", globals);
    let a = cmd.assert().success();
    // Warnings (a role that cannot read password hashes) give the reason, not pg_dumpall's SQL.
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        !err.contains("Query was") && !err.contains("SELECT"),
        "{err}"
    );
    if user == "plain" && globals != "off" {
        assert!(
            err.contains("password hashes"),
            "the fallback is said: {err}"
        );
    }
    summaries(&a.get_output().stdout)
}

fn store_cmd(bucket: &str) -> assert_cmd::Command {
    let mut cmd = backhaul_moto();
    cmd.env("S3_BUCKET", bucket).env("STAGE", "prod");
    cmd
}

fn manifest(bucket: &str, key: &str) -> serde_json::Value {
    serde_json::from_slice(&moto().get(bucket, &format!("{key}.manifest.json"))).unwrap()
}

#[test]
fn same_cluster_restore_is_identical_to_the_original() {
    let pg = source_cluster();
    let bucket = moto().bucket("faithful-same");
    let lines = backup(&pg, &bucket, "backup", PASSWORD, "on");
    assert_eq!(
        lines.len(),
        2,
        "the dump and the cluster globals: {lines:?}"
    );
    let dump_key = lines[0]["key"].as_str().unwrap().to_string();
    let globals_key = lines[1]["key"].as_str().unwrap().to_string();
    assert!(
        globals_key.contains("_PGSQL/globals_prod_"),
        "{globals_key}"
    );
    assert!(globals_key.ends_with(".sql.zst"), "{globals_key}");

    // The manifest records what the archive holds, owners and ACL entries included.
    let m = manifest(&bucket, &dump_key);
    let contents = &m["contents"];
    assert_eq!(contents["objects"]["BLOB"], 1, "{contents}");
    assert_eq!(contents["owners"]["Report Owner"], 2, "{contents}");
    assert_eq!(contents["owners"]["writer"], 1, "{contents}");
    assert!(
        contents["acl_entries"].as_u64().unwrap() >= 10,
        "{contents}"
    );
    assert_eq!(
        manifest(&bucket, &globals_key)["globals"]["role_passwords"],
        true
    );

    pg.create_db("restored");
    store_cmd(&bucket)
        .args(["restore", "latest", "--database", "faithful", "--to"])
        .arg(url(&pg, "backup", PASSWORD, "restored"))
        .assert()
        .success();
    let original = plain_dump(&pg, "faithful");
    assert!(
        original.contains("OWNER TO \"Report Owner\""),
        "owners are in the dump"
    );
    assert!(original.contains("ALTER LARGE OBJECT 424242 OWNER TO writer"));
    assert_eq!(original, plain_dump(&pg, "restored"), "backhaul restore");
    native_copy(&pg, "faithful", "native");
    assert_eq!(
        plain_dump(&pg, "native"),
        plain_dump(&pg, "restored"),
        "same as pg_dump | pg_restore"
    );
    // The parallel restore (definitions, data and privileges in separate pg_restore runs
    // cut from the archive's TOC) gives the same: ACLs still come last, as in one run.
    pg.create_db("restored_jobs");
    store_cmd(&bucket)
        .args([
            "restore",
            "latest",
            "--database",
            "faithful",
            "--jobs",
            "2",
            "--to",
        ])
        .arg(url(&pg, "backup", PASSWORD, "restored_jobs"))
        .assert()
        .success();
    assert_eq!(
        original,
        plain_dump(&pg, "restored_jobs"),
        "restore --jobs 2"
    );

    // verify --restore-into compares objects, owners and ACL entries with the manifest.
    pg.create_db("scratch");
    let a = store_cmd(&bucket)
        .args([
            "verify",
            "latest",
            "--database",
            "faithful",
            "--restore-into",
        ])
        .arg(url(&pg, "backup", PASSWORD, "scratch"))
        .assert()
        .success();
    let v = &summaries(&a.get_output().stdout)[0];
    assert_eq!(v["details"]["contents"], "ok", "{v}");

    // A restore that does not match the manifest's record fails verification, naming what.
    let mut m = manifest(&bucket, &dump_key);
    m["contents"]["owners"]["writer"] = serde_json::json!(5);
    moto().put(
        &bucket,
        &format!("{dump_key}.manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    );
    let a = store_cmd(&bucket)
        .args([
            "verify",
            "latest",
            "--database",
            "faithful",
            "--restore-into",
        ])
        .arg(url(&pg, "backup", PASSWORD, "scratch"))
        .assert()
        .code(1);
    let v = &summaries(&a.get_output().stdout)[0];
    assert_eq!(v["details"]["contents"], "differs", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("owners differ"),
        "{v}"
    );

    // The opt-outs still work, and verify then does not compare what was left out.
    pg.create_db("no_owner");
    store_cmd(&bucket)
        .args([
            "restore",
            "latest",
            "--database",
            "faithful",
            "--no-owner",
            "--no-acl",
            "--to",
        ])
        .arg(url(&pg, "backup", PASSWORD, "no_owner"))
        .assert()
        .success();
    let stripped = plain_dump(&pg, "no_owner");
    assert!(!stripped.contains("OWNER TO app_owner"));
    assert!(!stripped.contains("GRANT SELECT"));

    // list and verify treat the globals artifact like the others.
    let a = store_cmd(&bucket)
        .args(["list", "--json"])
        .assert()
        .success();
    let rows = summaries(&a.get_output().stdout);
    assert!(
        rows.iter()
            .any(|r| r["key"] == globals_key.as_str() && r["database"] == "(globals)"),
        "{rows:?}"
    );
    let a = store_cmd(&bucket)
        .args(["verify"])
        .arg(&globals_key)
        .assert()
        .success();
    let v = &summaries(&a.get_output().stdout)[0];
    assert_eq!(
        (
            v["details"]["checksum"].as_str(),
            v["details"]["structure"].as_str()
        ),
        (Some("ok"), Some("ok")),
        "{v}"
    );
}

#[test]
fn new_cluster_is_refused_until_the_globals_are_restored() {
    let pg = source_cluster();
    let bucket = moto().bucket("faithful-new");
    let lines = backup(&pg, &bucket, "backup", PASSWORD, "auto");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let original = plain_dump(&pg, "faithful");

    let other = Pg::start();
    // The connecting role exists there with another password; a local role must survive.
    other.create_user("backup", "other-pw");
    other.psql("postgres", "create role local_only nologin");
    other.create_db("faithful");
    let target = url(&other, "backup", "other-pw", "faithful");
    let a = store_cmd(&bucket)
        .args([
            "restore",
            "latest",
            "--database",
            "faithful",
            "--to",
            &target,
        ])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    for role in ["app_owner", "Report Owner", "readers", "writer", "analyst"] {
        assert!(err.contains(&format!("\"{role}\"")), "{role} named: {err}");
    }
    assert!(
        err.contains("restore-globals") && err.contains("--no-owner --no-acl"),
        "{err}"
    );
    assert_eq!(
        other.psql(
            "faithful",
            "select count(*) from pg_namespace where nspname in ('app','reports')"
        ),
        "0",
        "target unchanged"
    );
    // With --jobs the download runs beside the preflight: the same refusal, and the
    // private temp copy is gone with it.
    let tmp = tempfile::tempdir().unwrap();
    let a = store_cmd(&bucket)
        .env("TMPDIR", tmp.path())
        .args([
            "restore",
            "latest",
            "--database",
            "faithful",
            "--jobs",
            "2",
            "--to",
            &target,
        ])
        .assert()
        .code(1);
    let jobs_err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        jobs_err.contains("\"app_owner\"") && jobs_err.contains("restore-globals"),
        "{jobs_err}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no temp copy left behind"
    );
    assert_eq!(
        other.psql(
            "faithful",
            "select count(*) from pg_namespace where nspname in ('app','reports')"
        ),
        "0",
        "target unchanged by --jobs"
    );

    // Dry run: statements with passwords masked, nothing applied.
    let a = store_cmd(&bucket)
        .args(["restore-globals", "--dry-run"])
        .assert()
        .success();
    let shown = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(shown.contains("PASSWORD '***'"), "{shown}");
    assert!(!shown.contains("SCRAM-SHA-256$"), "{shown}");
    assert_eq!(
        other.psql(
            "postgres",
            "select count(*) from pg_roles where rolname = 'app_owner'"
        ),
        "0"
    );

    let apply = || {
        let a = store_cmd(&bucket)
            .args(["restore-globals", "latest", "--to"])
            .arg(url(&other, "backup", "other-pw", "postgres"))
            .assert()
            .success();
        summaries(&a.get_output().stdout)[0].clone()
    };
    let first = apply();
    let created: Vec<&str> = first["roles_created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        created,
        vec!["Report Owner", "analyst", "app_owner", "readers", "writer"],
        "{first}"
    );
    let after_first = globals_dump(&other);
    // Idempotent: the second run creates nothing and changes nothing (and could log in, so
    // the connecting role kept its own password).
    let second = apply();
    assert_eq!(second["roles_created"], serde_json::json!([]), "{second}");
    assert_eq!(after_first, globals_dump(&other));
    assert!(
        after_first.contains("CREATE ROLE local_only;"),
        "nothing is dropped"
    );
    assert!(
        after_first.contains("GRANT readers TO analyst"),
        "memberships"
    );
    assert!(
        after_first.contains("ALTER ROLE analyst SET work_mem TO '8MB'"),
        "role settings"
    );
    assert!(
        after_first.contains("ALTER ROLE backup WITH SUPERUSER"),
        "the connecting role is still a superuser"
    );

    store_cmd(&bucket)
        .args([
            "restore",
            "latest",
            "--database",
            "faithful",
            "--to",
            &target,
        ])
        .assert()
        .success();
    assert_eq!(original, plain_dump(&other, "faithful"));
}

#[test]
fn globals_fall_back_to_no_role_passwords_and_are_pruned_with_their_run() {
    let pg = Pg::start();
    pg.psql("postgres", ROLES_SQL);
    // A plain role, as on managed services: it may read its data but not pg_authid
    // (pg_read_all_data would let it: pg_authid is a table too).
    pg.psql("postgres", "create role plain login password 'plain-pw'");
    pg.create_db("faithful");
    pg.psql(
        "faithful",
        "create table t (x int); insert into t values (1); grant select on t to plain",
    );
    let bucket = moto().bucket("faithful-plain");
    let first = backup(&pg, &bucket, "plain", "plain-pw", "on");
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[1]["status"], "ok", "{first:?}");
    let gkey = first[1]["key"].as_str().unwrap().to_string();
    assert_eq!(manifest(&bucket, &gkey)["globals"]["role_passwords"], false);
    let script =
        String::from_utf8(zstd::decode_all(&moto().get(&bucket, &gkey)[..]).unwrap()).unwrap();
    assert!(script.contains("CREATE ROLE analyst;"), "{script}");
    assert!(
        !script.contains("SCRAM-SHA-256"),
        "no password hashes: {script}"
    );

    // Round trip into an empty cluster: the roles come back, without passwords.
    let other = Pg::start();
    other.create_user("admin", "admin-pw");
    store_cmd(&bucket)
        .args(["restore-globals", "--to"])
        .arg(url(&other, "admin", "admin-pw", "postgres"))
        .assert()
        .success();
    assert_eq!(
        other.psql("postgres", "select string_agg(rolname, ',' order by rolname) from pg_roles where rolname in ('analyst','readers','writer') and not exists (select 1 from pg_authid a where a.rolname = pg_roles.rolname and a.rolpassword is not null)"),
        "analyst,readers,writer"
    );
    assert_eq!(
        other.psql("postgres", "select count(*) from pg_auth_members m join pg_roles r on r.oid = m.roleid where r.rolname = 'readers'"),
        "2",
        "memberships"
    );

    // A globals failure in auto mode is reported, not fatal; with on it fails the run.
    let mut cmd = backhaul_moto();
    cmd.arg("backup");
    pg_env(&mut cmd, &pg, "plain", "plain-pw", "faithful");
    let missing = pg.dir.path().join("nobin");
    std::fs::create_dir_all(&missing).unwrap();
    std::os::unix::fs::symlink(pg.bin.join("pg_dump"), missing.join("pg_dump")).unwrap();
    std::fs::write(
        missing.join("pg_dumpall"),
        "#!/bin/sh\necho 'pg_dumpall: error: boom' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        missing.join("pg_dumpall"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(pg.bin.join("pg_restore"), missing.join("pg_restore")).unwrap();
    std::os::unix::fs::symlink(pg.bin.join("psql"), missing.join("psql")).unwrap();
    cmd.env("S3_BUCKET", &bucket)
        .env("STAGE", "prod")
        .env("PG_DUMP_PATH", missing.join("pg_dump"))
        .env("BACKUP_GLOBALS", "auto");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let a = cmd.assert().success();
    let lines = summaries(&a.get_output().stdout);
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[1]["status"], "skipped", "{lines:?}");
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("cluster globals not saved"));
    let second_dump = lines[0]["key"].as_str().unwrap().to_string();
    // BACKUP_GLOBALS=on: the same failure fails the run (the database dump still stands).
    let mut on = backhaul_moto();
    on.arg("backup");
    pg_env(&mut on, &pg, "plain", "plain-pw", "faithful");
    on.env("S3_BUCKET", moto().bucket("faithful-on"))
        .env("STAGE", "prod")
        .env("PG_DUMP_PATH", missing.join("pg_dump"))
        .env("BACKUP_GLOBALS", "on");
    let a = on.assert().code(1);
    let lines = summaries(&a.get_output().stdout);
    assert_eq!(
        (lines[0]["status"].as_str(), lines[1]["status"].as_str()),
        (Some("ok"), Some("failed")),
        "{lines:?}"
    );

    // Prune keeps the newest run; the first run's dump and globals go together.
    let a = store_cmd(&bucket)
        .args(["prune", "--keep-last", "1"])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(
        out.contains(&format!("delete {gkey} (globals of a deleted run)")),
        "{out}"
    );
    let keys = moto().keys(&bucket);
    assert!(!keys.iter().any(|k| k.contains("globals_")), "{keys:?}");
    assert!(keys.contains(&second_dump), "{keys:?}");
}
