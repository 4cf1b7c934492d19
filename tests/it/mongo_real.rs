//! MongoDB backups and restores with the real mongodump/mongorestore (100.8.0, from
//! `../shared/mongo-tools`) against the suite's wire-protocol server: round trips compared
//! document by document and index by index, URIs that name a database, a misspelled
//! database, awkward names, the old script's zips, and a password the real tools print on a
//! failed login that never reaches backhaul's output.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::mongod::*;
use crate::common::*;

const USER: &str = "backup";
const PASSWORD: &str = "s3cr@t:pw/x";
const PASSWORD_ENCODED: &str = "s3cr%40t%3Apw%2Fx";

fn userinfo() -> String {
    format!("{USER}:{PASSWORD_ENCODED}")
}

fn with_auth(seed: Value) -> Mongod {
    Mongod::start(MongodOpts {
        auth: Some((USER, PASSWORD)),
        seed: Some(seed),
        ..Default::default()
    })
}

/// backhaul against moto with the real tools.
fn cmd(bucket: &str, work: &Path) -> assert_cmd::Command {
    let mut cmd = backhaul_moto();
    cmd.env("MONGODUMP_PATH", mongodump())
        .env("MONGORESTORE_PATH", mongorestore())
        .env("BACKUP_WORK_DIR", work)
        .env("S3_BUCKET", bucket)
        .env("STAGE", "prod");
    cmd
}

fn backup(
    bucket: &str,
    work: &Path,
    uri: &str,
    db: Option<&str>,
    format: &str,
) -> assert_cmd::Command {
    let mut c = cmd(bucket, work);
    c.arg("backup")
        .arg("--only")
        .arg("mongo")
        .env("MONGO_CONNECTION_STRING", uri)
        .env("MONGO_FORMAT", format);
    if let Some(db) = db {
        c.env("MONGO_DB_NAME", db);
    }
    c
}

fn backed_up(mut c: assert_cmd::Command) -> (String, String) {
    let out = c.assert().success();
    let s = summaries(&out.get_output().stdout);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["status"], "ok");
    (
        s[0]["key"].as_str().unwrap().to_string(),
        String::from_utf8_lossy(&out.get_output().stderr).into_owned(),
    )
}

fn restore(bucket: &str, work: &Path, key: &str, to: &str) -> assert_cmd::Command {
    let mut c = cmd(bucket, work);
    c.args(["restore", key, "--to", to]);
    c
}

fn manifest(bucket: &str, key: &str) -> Value {
    serde_json::from_slice(&moto().get(bucket, &format!("{key}.manifest.json"))).unwrap()
}

fn no_password(out: &std::process::Output) {
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(
            !text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED),
            "password in the output: {text}"
        );
    }
}

/// Counts per collection as the manifest should record them.
fn shop_counts(db: &str) -> Value {
    json!({
        format!("{db}.empty"): 0,
        format!("{db}.events.2024.q1"): 2,
        format!("{db}.orders"): 120,
        format!("{db}.users"): 40,
    })
}

fn round_trip(format: &str) {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket(&format!("mreal-{format}"));
    let source = with_auth(shop_seed("shop"));
    let uri = source.uri(Some(&userinfo()), "?authSource=admin");
    let (key, log) = backed_up(backup(&bucket, work.path(), &uri, Some("shop"), format));
    assert!(
        log.contains("\"collection\":\"shop.orders\"") && log.contains("\"documents\":120"),
        "each collection's count is logged: {log}"
    );
    let m = manifest(&bucket, &key);
    assert_eq!(m["source"]["collections"], shop_counts("shop"));
    assert_eq!(m["source"]["dump_tool_version"], "100.8.0");

    // Into a fresh deployment under its own name.
    let target = Mongod::start(MongodOpts::default());
    let out = restore(&bucket, work.path(), &key, &target.uri(None, ""))
        .assert()
        .success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["database"], "shop");
    assert_same_database(&target.database("shop"), &source.database("shop"));

    // verify --restore-into compares the restored counts with the manifest.
    let scratch = Mongod::start(MongodOpts::default());
    let out = cmd(&bucket, work.path())
        .args(["verify", &key, "--restore-into", &scratch.uri(None, "")])
        .assert()
        .success();
    let v = summaries(&out.get_output().stdout);
    assert_eq!(v[0]["details"]["restore"], "ok", "{v:?}");
    assert_eq!(v[0]["details"]["counts"], "match the manifest", "{v:?}");
    assert_eq!(v[0]["details"]["documents_restored"], 162);
    assert_same_database(&scratch.database("shop"), &source.database("shop"));
    assert!(
        std::fs::read_dir(work.path()).unwrap().next().is_none(),
        "temp dirs left"
    );
}

#[test]
fn zip_round_trip_keeps_documents_and_indexes() {
    round_trip("zip");
}

#[test]
fn archive_round_trip_keeps_documents_and_indexes() {
    round_trip("archive");
}

/// `mongodb://u:p@h/admin` names the login database: the backup of `shop` must still work
/// (real mongodump refuses a URI database that differs from --db), and a restore into a URI
/// naming `copy` lands in `copy`, logging in where the URI says.
#[test]
fn uri_naming_a_database_is_the_login_database_and_the_restore_target() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-uridb");
    let source = with_auth(shop_seed("shop"));
    for format in ["zip", "archive"] {
        let (key, _) = backed_up(backup(
            &bucket,
            work.path(),
            &source.uri(Some(&userinfo()), "admin"),
            Some("shop"),
            format,
        ));
        let target = with_auth(json!({}));
        let to = target.uri(Some(&userinfo()), "copy?authSource=admin");
        let out = restore(&bucket, work.path(), &key, &to).assert().success();
        no_password(out.get_output());
        assert_eq!(summaries(&out.get_output().stdout)[0]["database"], "copy");
        assert_same_database(&target.database("copy"), &source.database("shop"));
        assert_eq!(
            target.database("shop"),
            Value::Null,
            "{format}: nothing under the old name"
        );

        // A URI naming the database without authSource logs in there: a user defined in
        // `copy` (as the driver reads `mongodb://u:p@h/copy`).
        let target = Mongod::start(MongodOpts {
            auth: Some((USER, PASSWORD)),
            auth_db: Some("copy"),
            ..Default::default()
        });
        restore(
            &bucket,
            work.path(),
            &key,
            &target.uri(Some(&userinfo()), "copy"),
        )
        .assert()
        .success();
        assert_same_database(&target.database("copy"), &source.database("shop"));
    }

    // No database and no authSource: the driver logs in to admin, and so must the tools
    // (left alone, mongodump logs in to its --db).
    backed_up(backup(
        &bucket,
        work.path(),
        &source.uri(Some(&userinfo()), ""),
        Some("shop"),
        "zip",
    ));

    // Without MONGO_DB_NAME the URI's database is the scope and the login database.
    let own = Mongod::start(MongodOpts {
        auth: Some((USER, PASSWORD)),
        auth_db: Some("shop"),
        seed: Some(shop_seed("shop")),
        ..Default::default()
    });
    // Its own bucket: the backup above may have taken this second's key (keys never repeat).
    let bucket = moto().bucket("mreal-uridb-scope");
    let (key, _) = backed_up(backup(
        &bucket,
        work.path(),
        &own.uri(Some(&userinfo()), "shop"),
        None,
        "zip",
    ));
    assert!(key.contains("_MONGO/shop_"), "{key}");
    assert_eq!(
        manifest(&bucket, &key)["source"]["collections"],
        shop_counts("shop")
    );
}

/// A missing or misspelled database: real mongodump exits 0 with an empty dump (a valid
/// 100-byte archive). That is a failed backup, with nothing stored, unless asked for.
#[test]
fn misspelled_database_fails_the_backup() {
    let work = tempfile::tempdir().unwrap();
    let source = with_auth(shop_seed("shop"));
    let uri = source.uri(Some(&userinfo()), "?authSource=admin");
    for format in ["zip", "archive"] {
        let bucket = moto().bucket(&format!("mreal-typo-{format}"));
        let out = backup(&bucket, work.path(), &uri, Some("shpo"), format)
            .assert()
            .code(1);
        let s = summaries(&out.get_output().stdout);
        assert_eq!(s[0]["status"], "failed");
        let err = s[0]["error"].as_str().unwrap();
        assert!(err.contains("no collections in database shpo"), "{err}");
        assert_eq!(
            moto().keys(&bucket),
            Vec::<String>::new(),
            "{format}: nothing stored"
        );
        assert_eq!(moto().multipart_uploads(&bucket), 0);

        let mut c = backup(&bucket, work.path(), &uri, Some("shpo"), format);
        c.arg("--allow-empty");
        let (key, _) = backed_up(c);
        assert_eq!(manifest(&bucket, &key)["source"]["collections"], json!({}));
    }
}

/// `*` is a wildcard in --nsInclude and a plain character in --nsFrom/--nsTo; dots in
/// collection names are part of the name.
#[test]
fn star_database_and_dotted_collections_restore_under_the_target_name() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-star");
    let seed = json!({
        "sh*p": {
            "a.b.c": {"documents": [{"_id": {"$numberInt": "1"}, "v": "x"}]},
            "v1.2.3.log": {"documents": [{"_id": "k", "n": {"$numberLong": "7"}}],
                           "indexes": [{"key": {"n": {"$numberInt": "1"}}, "name": "n_1"}]},
        },
        "shop": {"other": {"documents": [{"_id": "not me"}]}},
    });
    let source = Mongod::seeded(seed);
    for format in ["zip", "archive"] {
        let (key, _) = backed_up(backup(
            &bucket,
            work.path(),
            &source.uri(None, ""),
            Some("sh*p"),
            format,
        ));
        // Existing same-named collections in the target must be left alone.
        let target = Mongod::seeded(json!({"sh*p": {"a.b.c": {"documents": [{"_id": "keep"}]}}}));
        let mut c = restore(&bucket, work.path(), &key, &target.uri(None, "c*py"));
        c.arg("--clean");
        c.assert().success();
        assert_same_database(&target.database("c*py"), &source.database("sh*p"));
        assert_eq!(
            target.database("sh*p")["a.b.c"]["documents"],
            json!([{"_id": "keep"}]),
            "{format}: the source's name in the target is untouched"
        );
        assert_eq!(target.database("shop"), Value::Null);
    }
}

/// The old script: `mongodump --uri "$MONGO_CONNECTION_STRING" --out mongo_backup` (every
/// database) and `zip -r $MONGO_DB_NAME_$TS.zip mongo_backup/`, no manifest.
#[test]
fn zip_made_by_the_old_script_restores_every_database() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-oldzip");
    let mut seed = shop_seed("shop");
    seed["inventory"] = json!({"items": {"documents": [{"_id": "i1", "q": {"$numberInt": "3"}}]}});
    let source = with_auth(seed);
    let dump = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(mongodump())
        .arg(format!(
            "--uri={}",
            source.uri(Some(&userinfo()), "?authSource=admin")
        ))
        .arg("--out")
        .arg(dump.path().join("mongo_backup"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let zip = zip_r(dump.path(), "mongo_backup");
    let key = "prod/2024-03-09_07h05m03s_MONGO/shop_2024-03-09_07h05m03s.zip";
    moto().put(&bucket, key, zip);

    let target = Mongod::start(MongodOpts::default());
    let out = restore(&bucket, work.path(), "latest", &target.uri(None, ""))
        .args(["--kind", "mongo", "--database", "shop"])
        .assert()
        .success();
    assert_eq!(
        summaries(&out.get_output().stdout)[0]["database"],
        "admin,inventory,shop"
    );
    assert_eq!(
        target.database("admin")["system.users"],
        source.database("admin")["system.users"],
        "the users, through _mergeAuthzCollections"
    );
    assert_same_database(&target.database("shop"), &source.database("shop"));
    assert_same_database(&target.database("inventory"), &source.database("inventory"));

    // Into a URI naming one database: ambiguous with several, refused before restoring.
    let other = Mongod::start(MongodOpts::default());
    let out = restore(&bucket, work.path(), key, &other.uri(None, "copy"))
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("holds the databases admin, inventory, shop"),
        "{err}"
    );
    assert_eq!(other.state(), json!({}));

    // And backhaul itself, with MONGO_DB_NAME unset, dumps everything into one artifact.
    let (key, _) = backed_up(backup(
        &bucket,
        work.path(),
        &source.uri(Some(&userinfo()), "?authSource=admin"),
        None,
        "archive",
    ));
    assert!(key.contains("_MONGO/all_"), "{key}");
    let counts = &manifest(&bucket, &key)["source"]["collections"];
    assert_eq!(counts["inventory.items"], 1);
    assert_eq!(counts["shop.orders"], 120);
    let target = Mongod::start(MongodOpts::default());
    restore(&bucket, work.path(), &key, &target.uri(None, ""))
        .assert()
        .success();
    assert_same_database(&target.database("inventory"), &source.database("inventory"));
    assert_same_database(&target.database("shop"), &source.database("shop"));
}

/// `zip -r out.zip mongo_backup/` as Info-ZIP writes it: directory entries, then files.
fn zip_r(parent: &Path, top: &str) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    let mut stack = vec![parent.join(top)];
    while let Some(dir) = stack.pop() {
        let rel = dir
            .strip_prefix(parent)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        z.add_directory(format!("{rel}/"), opts).unwrap();
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                z.start_file(format!("{rel}/{}", e.file_name().to_string_lossy()), opts)
                    .unwrap();
                z.write_all(&std::fs::read(e.path()).unwrap()).unwrap();
            }
        }
    }
    z.finish().unwrap().into_inner()
}

/// The real tools print the whole URI, password included, when a login fails.
#[test]
fn password_never_in_any_output_while_the_real_tools_print_it() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-pw");
    let source = with_auth(shop_seed("shop"));
    let wrong = Mongod::start(MongodOpts {
        auth: Some((USER, "another password")),
        ..Default::default()
    });
    let uri = wrong.uri(Some(&userinfo()), "shop");
    // What mongodump itself prints.
    let raw = std::process::Command::new(mongodump())
        .arg(format!("--uri={uri}"))
        .arg("--archive=/dev/null")
        .output()
        .unwrap();
    assert!(!raw.status.success());
    assert!(
        String::from_utf8_lossy(&raw.stderr).contains(PASSWORD_ENCODED),
        "the real tool prints the password: the test needs that"
    );
    for format in ["zip", "archive"] {
        let out = backup(&bucket, work.path(), &uri, Some("shop"), format)
            .assert()
            .code(1);
        no_password(out.get_output());
        let s = summaries(&out.get_output().stdout);
        let err = s[0]["error"].as_str().unwrap();
        assert!(err.contains("Authentication failed"), "{err}");
        assert!(err.contains("***"), "redacted, not dropped: {err}");
    }
    let (key, log) = backed_up(backup(
        &bucket,
        work.path(),
        &source.uri(Some(&userinfo()), "?authSource=admin"),
        Some("shop"),
        "archive",
    ));
    assert!(!log.contains(PASSWORD) && !log.contains(PASSWORD_ENCODED));
    let out = restore(
        &bucket,
        work.path(),
        &key,
        &wrong.uri(Some(&userinfo()), ""),
    )
    .assert()
    .code(1);
    no_password(out.get_output());
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("Authentication failed"));
}

/// A fake tool: `--version` prints `version`, anything else prints `stderr` and exits 0.
fn fake_tool(dir: &Path, name: &str, version: &str, stderr: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{name} version: {version}'; exit 0; fi\necho '{stderr}' >&2\nexit 0\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn tools_older_than_100_3_and_impossible_flags_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-refuse");
    let old = fake_tool(work.path(), "mongodump", "100.2.1", "");
    let mut c = backup(&bucket, work.path(), "mongodb://h/", Some("shop"), "zip");
    c.env("MONGODUMP_PATH", &old);
    let out = c.assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("100.2.1") && err.contains("100.3.0"), "{err}");
    std::fs::remove_file(&old).unwrap();

    for (format, arg, why) in [
        ("archive", "--oplog", "--oplog"),
        ("zip", "--gzip", ".bson.gz"),
        ("zip", "--db=other", "MONGO_DB_NAME"),
    ] {
        let out = backup(&bucket, work.path(), "mongodb://h/", Some("shop"), format)
            .arg(format!("--mongodump-arg={arg}"))
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(moto().keys(&bucket), Vec::<String>::new());
}

/// A mongorestore that exits 0 having restored fewer documents than the backup holds (as
/// the real one does when it skips a folder) fails the restore.
#[test]
fn restore_fails_when_fewer_documents_were_restored() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-fewer");
    let source = Mongod::seeded(shop_seed("shop"));
    for format in ["zip", "archive"] {
        let (key, _) = backed_up(backup(
            &bucket,
            work.path(),
            &source.uri(None, ""),
            Some("shop"),
            format,
        ));
        let tools = tempfile::tempdir().unwrap();
        let fake = fake_tool(
            tools.path(),
            "mongorestore",
            "100.8.0",
            "2024-01-01T00:00:00.000+0000\t0 document(s) restored successfully. 0 document(s) failed to restore.",
        );
        let mut c = restore(&bucket, work.path(), &key, "mongodb://127.0.0.1:1/");
        c.env("MONGORESTORE_PATH", &fake);
        let out = c.assert().code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains("restored 0 of the 162 documents"),
            "{format}: {err}"
        );

        // The right total, but one collection short and another over: still a failure,
        // naming the collection.
        let fake = fake_tool(
            tools.path(),
            "mongorestore",
            "100.8.0",
            "t\\tfinished restoring shop.orders (119 documents, 0 failures)\\nt\\tfinished restoring shop.users (41 documents, 0 failures)\\nt\\tfinished restoring shop.events.2024.q1 (2 documents, 0 failures)\\nt\\t162 document(s) restored successfully. 0 document(s) failed to restore.",
        );
        let mut c = restore(&bucket, work.path(), &key, "mongodb://127.0.0.1:1/");
        c.env("MONGORESTORE_PATH", &fake);
        let out = c.assert().code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains("shop.orders: 119 restored, 120 in the backup; shop.users: 41 restored, 40 in the backup"),
            "{format}: {err}"
        );
    }
}

/// Collection names mongodump escapes in zip mode (`url.QueryEscape`, and names over 238
/// escaped bytes truncated and hashed): the manifest, the restore's counts and verify's
/// comparison use the real names, in both formats.
#[test]
fn escaped_and_truncated_collection_names_are_the_real_names() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-names");
    let long = "é".repeat(120);
    let names = [
        "odd types",
        "a+b",
        "100%",
        "a.b",
        "événements",
        long.as_str(),
    ];
    let mut shop = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let docs: Vec<Value> = (0..=i)
            .map(|k| json!({"_id": {"$numberInt": k.to_string()}, "in": name}))
            .collect();
        shop.insert(name.to_string(), json!({"documents": docs}));
    }
    let source = Mongod::seeded(json!({ "shop": shop }));
    let want: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("shop.{n}"), json!(i + 1)))
        .collect();
    for format in ["zip", "archive"] {
        let (key, _) = backed_up(backup(
            &bucket,
            work.path(),
            &source.uri(None, ""),
            Some("shop"),
            format,
        ));
        assert_eq!(
            manifest(&bucket, &key)["source"]["collections"],
            Value::Object(want.clone()),
            "{format}"
        );
        let target = Mongod::start(MongodOpts::default());
        restore(&bucket, work.path(), &key, &target.uri(None, ""))
            .assert()
            .success();
        assert_same_database(&target.database("shop"), &source.database("shop"));

        let scratch = Mongod::start(MongodOpts::default());
        let out = cmd(&bucket, work.path())
            .args(["verify", &key, "--restore-into", &scratch.uri(None, "")])
            .assert()
            .success();
        let v = summaries(&out.get_output().stdout);
        assert_eq!(
            v[0]["details"]["counts"], "match the manifest",
            "{format}: {v:?}"
        );
        assert_eq!(v[0]["details"]["documents_restored"], 21, "{format}");
        assert_same_database(&scratch.database("shop"), &source.database("shop"));
    }
}

/// A whole-server backup of a server with auth holds its users (admin.system.users) and
/// admin.system.version, which mongorestore does not count as restored documents: it merges
/// users through a temporary collection and `_mergeAuthzCollections`. The restore exits 0,
/// every database comes back document by document, and the users are checked by name.
#[test]
fn whole_server_backup_with_users_restores_every_database_and_the_users() {
    let work = tempfile::tempdir().unwrap();
    let bucket = moto().bucket("mreal-users");
    let mut seed = shop_seed("shop");
    seed["café-2024"] = json!({"odd types": {"documents": [{"_id": "o1"}]}});
    let source = Mongod::start(MongodOpts {
        auth: Some((USER, PASSWORD)),
        more_users: &[("reporter", "r3p0rt")],
        seed: Some(seed),
        ..Default::default()
    });
    let uri = source.uri(Some(&userinfo()), "?authSource=admin");
    let users = |m: &Mongod| -> Vec<String> {
        m.database("admin")["system.users"]["documents"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|u| u["_id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(users(&source), ["admin.backup", "admin.reporter"]);
    for format in ["zip", "archive"] {
        let (key, _) = backed_up(backup(&bucket, work.path(), &uri, None, format));
        let counts = &manifest(&bucket, &key)["source"]["collections"];
        assert_eq!(counts["admin.system.users"], 2, "{format}: {counts}");
        assert_eq!(counts["admin.system.version"], 1, "{format}");
        assert_eq!(counts["café-2024.odd types"], 1, "{format}");

        let target = Mongod::start(MongodOpts::default());
        let out = restore(&bucket, work.path(), &key, &target.uri(None, ""))
            .assert()
            .success();
        let log = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            log.contains("2 user(s) and 0 role(s) in the backup, all present after the restore"),
            "{format}: {log}"
        );
        for db in ["shop", "café-2024"] {
            assert_same_database(&target.database(db), &source.database(db));
        }
        assert_eq!(
            target.database("admin")["system.users"]["documents"],
            source.database("admin")["system.users"]["documents"],
            "{format}: users as dumped"
        );

        // Into a deployment with auth: the restored users log in there.
        let secured = with_auth(json!({}));
        restore(
            &bucket,
            work.path(),
            &key,
            &secured.uri(Some(&userinfo()), "?authSource=admin"),
        )
        .assert()
        .success();
        let login = std::process::Command::new(mongodump())
            .arg(format!(
                "--uri={}",
                secured.uri(Some("reporter:r3p0rt"), "?authSource=admin")
            ))
            .args(["--db", "shop", "--archive=/dev/null"])
            .output()
            .unwrap();
        assert!(
            login.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&login.stderr)
        );

        let scratch = Mongod::start(MongodOpts::default());
        let out = cmd(&bucket, work.path())
            .args(["verify", &key, "--restore-into", &scratch.uri(None, "")])
            .assert()
            .success();
        let v = summaries(&out.get_output().stdout);
        let d = &v[0]["details"];
        assert_eq!(d["counts"], "match the manifest", "{format}: {v:?}");
        assert_eq!(
            d["users_and_roles"],
            "2 user(s) and 0 role(s) in the backup, all present after the restore"
        );

        // A mongorestore that leaves the users out (as with --nsExclude) exits 0: the
        // restore still fails, naming them.
        let tools = tempfile::tempdir().unwrap();
        let wrapper = tools.path().join("mongorestore");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' \"$@\" --nsExclude=admin.system.users\n",
                mongorestore().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let empty = Mongod::start(MongodOpts::default());
        let out = restore(&bucket, work.path(), &key, &empty.uri(None, ""))
            .env("MONGORESTORE_PATH", &wrapper)
            .env("MONGODUMP_PATH", mongodump())
            .assert()
            .code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains("lacks users the backup holds: admin.backup, admin.reporter"),
            "{format}: {err}"
        );

        // No mongodump to read them back with: mongorestore's own success stands, and the
        // restore says the users were not read back.
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec '{}' \"$@\"\n", mongorestore().display()),
        )
        .unwrap();
        let empty = Mongod::start(MongodOpts::default());
        let out = restore(&bucket, work.path(), &key, &empty.uri(None, ""))
            .env("MONGORESTORE_PATH", &wrapper)
            .env_remove("MONGODUMP_PATH")
            .assert()
            .success();
        let log = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            log.contains("merged by mongorestore; not read back: no mongodump found"),
            "{format}: {log}"
        );
        assert_eq!(users(&empty), ["admin.backup", "admin.reporter"]);
    }
}
