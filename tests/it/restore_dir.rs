//! Restore of a directory-format dump (`backup --jobs N`, issue 32): its `toc.dat` object plus
//! one object per data file, each verified against its own SHA-256 before the table it holds
//! can commit. The backups here are made the way `backup --jobs` stores them (see
//! [`dir_backup`]): a real `pg_dump -Fd -Z0`, each file its own zstd (and age) stream.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Command;

use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

/// Many tables (one big), large objects (one over 8 MiB, 40 small ones), two owners, grants, a foreign key,
/// sequences, a view.
const DIR_SQL: &str = r#"
create role dir_owner nologin;
create role dir_reader nologin;
create table events (id bigint primary key, at timestamptz, kind text, payload text);
insert into events
  select g, '2024-01-01'::timestamptz + g * interval '1 second', 'k' || (g % 7),
         md5(g::text) || md5((g * 3)::text)
  from generate_series(1, 120000) g;
create index events_kind on events (kind);
do $$ begin
  for i in 1..30 loop
    execute format('create table small_%s (id serial primary key, event bigint references events(id), note text)', i);
    execute format('insert into small_%s (event, note) select g, ''n'' || g from generate_series(1, %s) g', i, i * 3);
  end loop;
end $$;
alter table small_7 owner to dir_owner;
grant select on events to dir_reader;
revoke insert on small_3 from public;
create sequence ticket;
select setval('ticket', 4242);
create view kinds as select kind, count(*) from events group by kind;
select lo_from_bytea(9001, 'large object one');
select lo_from_bytea(9002, convert_to(repeat(md5('big'), 300000), 'UTF8'));
alter large object 9002 owner to dir_owner;
select lo_from_bytea(10000 + g, convert_to(repeat('lo' || g, g), 'UTF8')) from generate_series(1, 40) g;
"#;

fn fixture(hint: &str) -> Fixture {
    Fixture::builder(hint)
        .databases(&[("dirdb", DIR_SQL)])
        .start()
}

/// A directory dump as `backup --jobs` stores it.
struct DirDump {
    key: String,
    /// File name → its object's key (toc.dat: the entry key).
    objects: BTreeMap<String, String>,
    /// File name → bytes pg_dump wrote.
    raw: BTreeMap<String, u64>,
}

impl DirDump {
    /// The biggest table's data file.
    fn big_table(&self) -> String {
        self.raw
            .iter()
            .filter(|(n, _)| n.ends_with(".dat") && n != &"toc.dat" && !n.starts_with("blob_"))
            .max_by_key(|(_, size)| **size)
            .unwrap()
            .0
            .clone()
    }
}

/// One file's stored form: zstd (frame checksum on), then age when `recipient` is given.
fn seal(raw: &[u8], recipient: Option<&str>) -> Vec<u8> {
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    z.include_checksum(true).unwrap();
    z.write_all(raw).unwrap();
    let zst = z.finish().unwrap();
    let Some(r) = recipient else { return zst };
    let r: age::x25519::Recipient = r.parse().unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(&zst).unwrap();
    w.finish().unwrap();
    out
}

fn etag(bucket: &str, key: &str) -> String {
    let s3 = moto().s3();
    block_on(async { s3.head_object().bucket(bucket).key(key).send().await })
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string()
}

fn delete(bucket: &str, key: &str) {
    let s3 = moto().s3();
    block_on(async { s3.delete_object().bucket(bucket).key(key).send().await }).unwrap();
}

/// Makes a directory dump of `db` the way `backup --jobs` stores one: `toc.dat` at the entry
/// key, every other file its own object under the run id, and a format-2 manifest listing
/// each file with the SHA-256 of its stored bytes. The manifest's other fields come from a
/// single-file backup of the same database taken first (and removed).
fn dir_backup(fx: &Fixture, db: &str, recipient: Option<&str>) -> DirDump {
    let mut cmd = fx.backup(db);
    if let Some(r) = recipient {
        cmd.args(["--encrypt-to", r]);
    }
    let out = cmd.assert().success();
    let single = artifact_key(&out.get_output().stdout);
    let mut man = fx.manifest(&single);
    delete(&fx.bucket, &single);
    delete(&fx.bucket, &format!("{single}.manifest.json"));

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dump");
    let pg = &fx.pg;
    let st = Command::new(pg.bin.join("pg_dump"))
        .args(["-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string(), "-Fd", "-Z0", "-j", "2", "-f"])
        .arg(&dir)
        .arg(db)
        .status()
        .unwrap();
    assert!(st.success());

    let ts = man["timestamp"].as_str().unwrap().to_string();
    let ext = if recipient.is_some() {
        ".zst.age"
    } else {
        ".zst"
    };
    let folder = format!("prod/{ts}_PGSQL/backup_prod_{db}_{ts}.pgdir/");
    let key = format!("{folder}toc.dat{ext}");
    let mut dump = DirDump {
        key: key.clone(),
        objects: BTreeMap::new(),
        raw: BTreeMap::new(),
    };
    let (mut files, mut objects) = (Vec::new(), Vec::new());
    let (mut raw_total, mut stored_total) = (0u64, 0u64);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let raw = std::fs::read(dir.join(&name)).unwrap();
        let stored = seal(&raw, recipient);
        let object = if name == "toc.dat" {
            key.clone()
        } else {
            format!("{folder}testrun/{name}{ext}")
        };
        moto().put(&fx.bucket, &object, stored.clone());
        let tag = etag(&fx.bucket, &object);
        raw_total += raw.len() as u64;
        stored_total += stored.len() as u64;
        dump.objects.insert(name.clone(), object.clone());
        dump.raw.insert(name.clone(), raw.len() as u64);
        if name == "toc.dat" {
            man["sha256"] = sha256_hex(&stored).into();
            man["stored_bytes"] = stored.len().into();
            man["parts"] = 1.into();
            man["etag"] = tag.into();
            continue;
        }
        files.push(serde_json::json!({
            "name": name, "object": object, "offset": 0,
            "stored_bytes": stored.len(), "raw_bytes": raw.len(), "sha256": sha256_hex(&stored),
        }));
        objects.push(serde_json::json!({
            "key": object, "size": stored.len(), "parts": 1, "etag": tag,
        }));
    }
    let m = man.as_object_mut().unwrap();
    m.remove("version_id");
    m.remove("verification");
    m.insert("format".into(), 2.into());
    m.insert("key".into(), key.clone().into());
    m.insert("compression".into(), "zstd".into());
    m.insert("raw_bytes".into(), raw_total.into());
    m.insert(
        "directory".into(),
        serde_json::json!({
            "jobs": 2, "raw_bytes": raw_total, "stored_bytes": stored_total,
            "objects": objects, "files": files,
        }),
    );
    moto().put(
        &fx.bucket,
        &format!("{key}.manifest.json"),
        serde_json::to_vec_pretty(&man).unwrap(),
    );
    dump
}

fn output(a: &assert_cmd::assert::Assert) -> String {
    let o = a.get_output();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// User tables, views and sequences in `db`: 0 means nothing of a restore committed.
fn relations(pg: &Pg, db: &str) -> String {
    pg.psql(db, "select count(*) from pg_class c join pg_namespace n on n.oid=c.relnamespace where c.relkind in ('r','p','v','m','S') and n.nspname not in ('pg_catalog','information_schema') and n.nspname not like 'pg_toast%'")
}

#[test]
fn a_directory_dump_restores_identical_with_and_without_jobs() {
    let fx = fixture("dir-restore");
    let pg = &fx.pg;
    let original = plain_dump(pg, "dirdb");
    assert!(original.contains("ALTER TABLE public.small_7 OWNER TO dir_owner"));
    let dump = dir_backup(&fx, "dirdb", None);
    assert!(dump.raw.contains_key("blobs.toc"), "{:?}", dump.raw);
    assert!(dump.raw.values().any(|n| *n > 8 << 20), "a file over 8 MiB");
    // One backup, however many objects.
    let a = fx.cmd().args(["list", "--json"]).assert().success();
    let listed = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert_eq!(listed.matches(&dump.key).count(), 1, "{listed}");
    assert!(!listed.contains("testrun/"), "{listed}");

    for (db, jobs) in [("one_tx", None), ("jobs2", Some("2"))] {
        pg.create_db(db);
        let mut cmd = fx.cmd();
        cmd.args(["restore", &dump.key, "--to", &fx.url(db)]);
        if let Some(j) = jobs {
            cmd.args(["--jobs", j]);
        }
        let a = cmd.assert().success();
        let stderr = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        // With --jobs: the data in several pg_restores (the big table alone).
        let data_runs = stderr.matches("\"restoring data\"").count();
        assert_eq!(data_runs >= 2, jobs.is_some(), "{stderr}");
        let line = &summaries(&a.get_output().stdout)[0];
        assert_eq!(line["checksum_verified"], true, "{line}");
        assert_eq!(line["key"], dump.key.as_str());
        assert_eq!(plain_dump(pg, db), original, "{db}: same as the original");
    }
    // The large objects, byte for byte.
    let lo = "select md5(lo_get(9002)) || ' ' || length(lo_get(9002))";
    assert_eq!(pg.psql("one_tx", lo), pg.psql("dirdb", lo));
}

#[test]
fn a_damaged_file_commits_nothing() {
    let fx = fixture("dir-damaged");
    let pg = &fx.pg;
    let dump = dir_backup(&fx, "dirdb", None);
    let big = dump.big_table();
    let object = &dump.objects[&big];
    let mut bytes = moto().get(&fx.bucket, object);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    moto().put(&fx.bucket, object, bytes);

    pg.create_db("damaged");
    let a = fx
        .cmd()
        .args(["restore", &dump.key, "--to", &fx.url("damaged")])
        .assert()
        .failure()
        .code(1);
    let text = output(&a);
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains(&big), "names the file {big}: {text}");
    assert!(text.contains("nothing was committed"), "{text}");
    // One transaction: not even the definitions stayed.
    assert_eq!(relations(pg, "damaged"), "0");
}

#[test]
fn a_missing_object_or_manifest_is_refused_before_the_target_is_touched() {
    let fx = fixture("dir-missing");
    let pg = &fx.pg;
    let dump = dir_backup(&fx, "dirdb", None);
    pg.create_db("target");

    // A data file's object is gone: named, before anything runs.
    let lost = dump
        .objects
        .iter()
        .find(|(n, _)| n.starts_with("blob_"))
        .unwrap()
        .1
        .clone();
    let kept = moto().get(&fx.bucket, &lost);
    delete(&fx.bucket, &lost);
    for jobs in [&[][..], &["--jobs", "2"][..]] {
        let a = fx
            .cmd()
            .args(["restore", &dump.key, "--to", &fx.url("target")])
            .args(jobs)
            .assert()
            .failure()
            .code(1);
        let text = output(&a);
        assert!(text.contains("object missing"), "{text}");
        assert!(text.contains(&lost), "{text}");
        assert_eq!(relations(pg, "target"), "0");
    }
    moto().put(&fx.bucket, &lost, kept);

    // Without its manifest there is no file list and no checksum: never restored, not even
    // with --allow-unverified.
    let manifest = format!("{}.manifest.json", dump.key);
    delete(&fx.bucket, &manifest);
    for extra in [&[][..], &["--allow-unverified"][..]] {
        let a = fx
            .cmd()
            .args(["restore", &dump.key, "--to", &fx.url("target")])
            .args(extra)
            .assert()
            .failure()
            .code(1);
        let text = output(&a);
        assert!(text.contains("without a readable manifest"), "{text}");
    }
    assert_eq!(relations(pg, "target"), "0");
}

#[test]
fn an_encrypted_directory_dump_restores_with_the_identity() {
    let fx = fixture("dir-age");
    let pg = &fx.pg;
    let id = age::x25519::Identity::generate();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("key.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&file, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let dump = dir_backup(&fx, "dirdb", Some(&id.to_public().to_string()));
    assert!(dump.key.ends_with("toc.dat.zst.age"), "{}", dump.key);
    pg.create_db("decrypted");
    let a = fx
        .cmd()
        .args(["restore", &dump.key, "--to", &fx.url("decrypted")])
        .assert()
        .failure()
        .code(2);
    assert!(output(&a).contains("--identity"), "{}", output(&a));
    fx.cmd()
        .args([
            "restore",
            &dump.key,
            "--to",
            &fx.url("decrypted"),
            "--identity",
        ])
        .arg(&file)
        .assert()
        .success();
    assert_eq!(plain_dump(pg, "decrypted"), plain_dump(pg, "dirdb"));

    // verify: without the identity the stored bytes of every file are still checked.
    let a = fx.cmd().args(["verify", &dump.key]).assert().success();
    let line = &summaries(&a.get_output().stdout)[0];
    assert_eq!(line["details"]["checksum"], "ok", "{line}");
    assert_eq!(
        line["details"]["structure"], "skipped (encrypted, no --identity)",
        "{line}"
    );
    let a = fx
        .cmd()
        .args(["verify", &dump.key, "--identity"])
        .arg(&file)
        .assert()
        .success();
    let line = &summaries(&a.get_output().stdout)[0];
    assert_eq!(line["details"]["structure"], "ok", "{line}");
}

/// kill -9 of backhaul while a table's data streams in, without and with `--jobs`:
/// pg_restore's input ends inside a data block, which it refuses, and its transaction rolls
/// back: nothing of that table is left. With `--jobs`, the TOC it writes for post-data is
/// private (0600 in a 0700 directory) and the next run sweeps what the killed one left.
#[test]
fn kill9_mid_restore_commits_nothing_partial() {
    use std::os::unix::fs::PermissionsExt as _;
    let fx = fixture("dir-kill9");
    let pg = &fx.pg;
    let dump = dir_backup(&fx, "dirdb", None);
    let big = moto()
        .get(&fx.bucket, &dump.objects[&dump.big_table()])
        .len();
    // About 4 s for the big table's object.
    let slow = FaultProxy::start(
        &moto().endpoint,
        vec![Rule::new(
            "GET",
            "GetObject",
            Fault::Throttle {
                bytes_per_sec: big / 4,
            },
        )],
    );
    for (db, jobs) in [("killed", None), ("killed_jobs", Some("2"))] {
        pg.create_db(db);
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = backhaul_std();
        cmd.env("AWS_ENDPOINT_URL", slow.endpoint())
            .env("S3_BUCKET", &fx.bucket)
            .env("STAGE", "prod")
            .env("TMPDIR", tmp.path())
            .args(["restore", &dump.key, "--to", &fx.url(db)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(j) = jobs {
            cmd.args(["--jobs", j]);
        }
        let mut child = cmd.spawn().unwrap();
        // The big table's COPY is running.
        let copying = || {
            pg.psql(
                "postgres",
                &format!("select count(*) from pg_stat_activity where datname = '{db}' and query like 'COPY public.events%'"),
            )
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while copying() != "1" {
            assert!(
                std::time::Instant::now() < until,
                "{db}: the COPY never started"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{db}: backhaul ended early"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if jobs.is_some() {
            let dirs: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(dirs.len(), 1, "{dirs:?}");
            let mode =
                |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dirs[0]), 0o700);
            let files: Vec<_> = std::fs::read_dir(&dirs[0])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert!(files.iter().any(|f| f.ends_with("head.dump")), "{files:?}");
            for f in &files {
                assert_eq!(mode(f), 0o600, "{f:?}");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        let sessions = || {
            pg.psql(
                "postgres",
                &format!("select count(*) from pg_stat_activity where datname = '{db}'"),
            )
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sessions() != "0" && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(sessions(), "0", "{db}: a pg_restore outlived backhaul");
        match jobs {
            // One transaction: nothing at all.
            None => assert_eq!(relations(pg, db), "0"),
            // The definitions committed first; the table being loaded did not.
            Some(_) => assert_eq!(pg.psql(db, "select count(*) from events"), "0"),
        }
        // The next run sweeps what the killed one left.
        store_cmd(&fx.bucket)
            .env("TMPDIR", tmp.path())
            .arg("list")
            .assert()
            .success();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{db}");
    }
}

/// verify: every object (ETag), every file's SHA-256, the TOC through `pg_restore --list`, and
/// with `--restore-into` the one-transaction restore. A lost or damaged file fails it, named.
#[test]
fn verify_checks_every_file_of_a_directory_dump() {
    let fx = fixture("dir-verify");
    let pg = &fx.pg;
    let dump = dir_backup(&fx, "dirdb", None);
    pg.create_db("scratch");
    let a = fx
        .cmd()
        .args(["verify", &dump.key, "--restore-into", &fx.url("scratch")])
        .assert()
        .success();
    let line = &summaries(&a.get_output().stdout)[0];
    let d = &line["details"];
    assert_eq!(line["status"], "ok", "{line}");
    assert_eq!(d["checksum"], "ok", "{line}");
    assert_eq!(d["structure"], "ok", "{line}");
    assert_eq!(d["files"], dump.objects.len(), "{line}");
    assert_eq!(d["stored_objects"], dump.objects.len(), "{line}");
    assert_eq!(d["restore"], "ok", "{line}");
    assert_eq!(plain_dump(pg, "scratch"), plain_dump(pg, "dirdb"));
    // The verdict went into the manifest, which still lists every file.
    let man = fx.manifest(&dump.key);
    assert_eq!(man["verification"]["ok"], true);
    assert_eq!(
        man["directory"]["files"].as_array().unwrap().len(),
        dump.objects.len() - 1
    );

    // A flipped byte in one file: a checksum mismatch naming it.
    let big = dump.big_table();
    let object = &dump.objects[&big];
    let good = moto().get(&fx.bucket, object);
    let mut bad = good.clone();
    bad[10] ^= 1;
    moto().put(&fx.bucket, object, bad);
    let a = fx
        .cmd()
        .args(["verify", &dump.key])
        .assert()
        .failure()
        .code(1);
    let text = output(&a);
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains(&big), "{text}");

    // A lost file: "object missing", naming it.
    delete(&fx.bucket, object);
    let a = fx
        .cmd()
        .args(["verify", &dump.key])
        .assert()
        .failure()
        .code(1);
    let text = output(&a);
    assert!(
        text.contains(&format!("object missing: {object}")),
        "{text}"
    );
}

/// `--jobs 2` and a damaged file: the table it holds never commits; only tables whose own
/// files verified did, and the error names them.
#[test]
fn with_jobs_only_verified_tables_commit() {
    let fx = fixture("dir-jobs-damaged");
    let pg = &fx.pg;
    let dump = dir_backup(&fx, "dirdb", None);
    let big = dump.big_table();
    let object = &dump.objects[&big];
    let mut bytes = moto().get(&fx.bucket, object);
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x5a;
    // About 8 s for the damaged file, the largest (its pg_restore starts first): the small
    // tables, loaded by the other pg_restore meanwhile, are in long before its verdict.
    let slow = FaultProxy::start(
        &moto().endpoint,
        vec![Rule::new(
            "GET",
            "GetObject",
            Fault::Throttle {
                bytes_per_sec: bytes.len() / 8,
            },
        )],
    );
    moto().put(&fx.bucket, object, bytes);

    pg.create_db("partial");
    let a = fx
        .cmd()
        .env("AWS_ENDPOINT_URL", slow.endpoint())
        .args([
            "restore",
            &dump.key,
            "--jobs",
            "2",
            "--to",
            &fx.url("partial"),
        ])
        .assert()
        .failure()
        .code(1);
    let text = output(&a);
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains(&big), "names the file {big}: {text}");
    assert!(text.contains("partly restored"), "{text}");
    assert_eq!(pg.psql("partial", "select count(*) from events"), "0");
    // Committed: exactly the tables the message names, each whole.
    let named = text
        .split("verified against its own SHA-256 first: ")
        .nth(1)
        .and_then(|t| t.split("; ").next())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(named.contains("TABLE DATA public.small_"), "{text}");
    for i in 1..=30 {
        let rows = pg.psql("partial", &format!("select count(*) from small_{i}"));
        let listed = named
            .split(", ")
            .any(|n| n == format!("TABLE DATA public.small_{i}"));
        let want = if listed {
            (i * 3).to_string()
        } else {
            "0".into()
        };
        assert_eq!(rows, want, "small_{i}: {named}");
    }
}
