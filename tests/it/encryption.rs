//! Client-side encryption with age (`--encrypt-to` / `--identity`) and S3 server-side
//! encryption, against a real PostgreSQL cluster, the real mongodump and moto.

use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use tempfile::TempDir;

use crate::common::*;

const PASSWORD: &str = "enc-pw";

/// A fresh age key pair: the identity file on disk, its recipient and its secret text.
struct Key {
    _dir: TempDir,
    file: PathBuf,
    recipient: String,
    secret: String,
}

fn key() -> Key {
    let id = age::x25519::Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.txt");
    let secret = id.to_string().expose_secret().to_string();
    std::fs::write(&file, format!("# created: by the test\n{secret}\n")).unwrap();
    Key {
        _dir: dir,
        file,
        recipient: id.to_public().to_string(),
        secret,
    }
}

fn fixture(hint: &str) -> Fixture {
    Fixture::builder(hint).password(PASSWORD).start()
}

fn pg_backup(fx: &Fixture, extra: &[&str]) -> String {
    let out = fx.backup("app").args(extra).assert().success();
    artifact_key(&out.get_output().stdout)
}

fn output(a: &assert_cmd::assert::Assert) -> String {
    let o = a.get_output();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn postgres_backup_is_encrypted_and_restores_with_the_identity() {
    let fx = fixture("age-pg");
    let (pg, bucket) = (&fx.pg, &fx.bucket);
    let k = key();
    let key = pg_backup(&fx, &["--encrypt-to", &k.recipient]);
    assert!(key.ends_with(".dump.zst.age"), "{key}");

    let object = moto().get(bucket, &key);
    assert!(object.starts_with(b"age-encryption.org/v1"));
    assert!(!object.windows(5).any(|w| w == b"PGDMP"));
    let man = manifest(bucket, &key);
    assert_eq!(man["encryption"]["scheme"], "age");
    assert_eq!(man["encryption"]["recipients"][0], k.recipient.as_str());
    assert_eq!(man["compression"], "zstd");
    assert_eq!(man["sha256"], sha256_hex(&object));
    // The contents summary is taken from the plaintext stream, before encryption.
    assert!(
        man["contents"]["objects"]["TABLE"].as_u64().unwrap() >= 1,
        "{man}"
    );

    // list parses the key like any other artifact.
    let out = store_cmd(bucket)
        .args(["list", "--json"])
        .assert()
        .success();
    assert_eq!(summaries(&out.get_output().stdout)[0]["key"], key.as_str());

    let restore = |db: &str, identity: Option<&Path>| {
        pg.create_db(db);
        let mut cmd = store_cmd(bucket);
        cmd.args(["restore", "latest", "--to", &fx.url(db)]);
        if let Some(f) = identity {
            cmd.arg("--identity").arg(f);
        }
        cmd.assert()
    };
    let a = restore("no_identity", None).code(2);
    let all = output(&a);
    assert!(all.contains("--identity is not set"), "{all}");

    let other = self::key();
    let a = restore("wrong_identity", Some(&other.file)).code(1);
    let all = output(&a);
    assert!(all.contains("no identity matches"), "{all}");
    assert!(!all.contains(&other.secret), "{all}");
    assert_eq!(user_tables(pg, "wrong_identity"), "0");

    let a = restore("restored", Some(&k.file)).success();
    assert!(!output(&a).contains(&k.secret));
    assert_eq!(summaries(&a.get_output().stdout)[0]["status"], "ok");
    assert_eq!(pg.fingerprint("restored"), pg.fingerprint("app"));

    let a = store_cmd(bucket)
        .args(["verify", "latest", "--identity"])
        .arg(&k.file)
        .assert()
        .success();
    let line = &summaries(&a.get_output().stdout)[0];
    assert_eq!(line["details"]["checksum"], "ok");
    assert_eq!(line["details"]["structure"], "ok");

    // Without an identity the stored bytes are still checked; the structure is not.
    let a = store_cmd(bucket)
        .args(["verify", "latest"])
        .assert()
        .success();
    let line = &summaries(&a.get_output().stdout)[0];
    assert_eq!(line["status"], "ok");
    assert_eq!(line["details"]["checksum"], "ok");
    assert_eq!(
        line["details"]["structure"],
        "skipped (encrypted, no --identity)"
    );
}

fn user_tables(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "select count(*) from pg_tables where schemaname not in ('pg_catalog','information_schema')",
    )
}

#[test]
fn env_recipients_and_pg_compression_modes() {
    let fx = fixture("age-env");
    let (pg, bucket) = (&fx.pg, &fx.bucket);
    let (a, b) = (key(), key());
    let mut cmd = fx.backup("app");
    cmd.env(
        "BACKUP_ENCRYPT_TO",
        format!("{},{}", a.recipient, b.recipient),
    )
    .env("PG_COMPRESSION", "pg");
    let key = artifact_key(&cmd.assert().success().get_output().stdout);
    assert!(key.ends_with(".dump.age"), "{key}");
    let man = manifest(bucket, &key);
    assert_eq!(man["encryption"]["recipients"].as_array().unwrap().len(), 2);
    // Either recipient's identity decrypts.
    for (db, k) in [("via_a", &a), ("via_b", &b)] {
        pg.create_db(db);
        store_cmd(bucket)
            .args(["restore", &key, "--to", &fx.url(db), "--identity"])
            .arg(&k.file)
            .assert()
            .success();
        assert_eq!(pg.fingerprint(db), pg.fingerprint("app"), "{db}");
    }
}

#[test]
fn bad_recipient_is_a_config_error() {
    let a = backhaul_moto()
        .args(["backup", "--encrypt-to", "age1notakey"])
        .env("S3_BUCKET", "unused")
        .env("STAGE", "prod")
        .env("PG_DB_HOST", "127.0.0.1")
        .env("PG_DB_NAME", "app")
        .env("PG_DB_USER", "app")
        .env("PG_DB_PASSWORD", "x")
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert_eq!(
        err.trim_end(),
        "error: --encrypt-to \"age1notakey\" is not an age X25519 recipient (expected age1…)"
    );
}

#[test]
fn unreadable_identity_file_is_a_config_error_without_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("id.txt");
    std::fs::write(&f, "AGE-SECRET-KEY-1NOTREALLYAKEYBUTSECRETLOOKING\n").unwrap();
    let a = store_cmd("unused")
        .args(["verify", "latest", "--identity"])
        .arg(&f)
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("--identity"), "{err}");
    assert!(!err.contains("NOTREALLYAKEY"), "{err}");
}

#[test]
fn mongo_zip_is_encrypted_and_verifies_with_the_identity() {
    use crate::common::mongod::*;
    let work = tempfile::tempdir().unwrap();
    let server = Mongod::start(MongodOpts {
        auth: Some(("u", "pw")),
        seed: Some(shop_seed("shop")),
        ..Default::default()
    });
    let k = key();
    let bucket = moto().bucket("age-mongo");
    let a = store_cmd(&bucket)
        .args(["backup", "--encrypt-to", &k.recipient])
        .env("MONGODUMP_PATH", mongodump())
        .env("MONGO_CONNECTION_STRING", server.uri(Some("u:pw"), ""))
        .env("MONGO_DB_NAME", "shop")
        .env("BACKUP_WORK_DIR", work.path())
        .assert()
        .success();
    let key = artifact_key(&a.get_output().stdout);
    assert!(key.ends_with(".zip.age"), "{key}");
    let object = moto().get(&bucket, &key);
    assert!(object.starts_with(b"age-encryption.org/v1"));
    assert_eq!(manifest(&bucket, &key)["encryption"]["scheme"], "age");

    let a = store_cmd(&bucket)
        .args(["verify", "latest", "--kind", "mongo", "--identity"])
        .arg(&k.file)
        .assert()
        .success();
    let line = &summaries(&a.get_output().stdout)[0];
    assert_eq!(line["details"]["structure"], "ok", "{line}");
    assert_eq!(line["details"]["zip_entries"], 8, "{line}");

    let other = self::key();
    store_cmd(&bucket)
        .args(["verify", "latest", "--identity"])
        .arg(&other.file)
        .assert()
        .code(1);
}

#[test]
fn sse_aes256_reaches_the_object() {
    let fx = fixture("sse");
    let key = pg_backup(&fx, &["--sse", "AES256"]);
    let head = block_on(
        moto()
            .s3()
            .head_object()
            .bucket(&fx.bucket)
            .key(&key)
            .send(),
    )
    .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );
}
