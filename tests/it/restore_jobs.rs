//! `restore --jobs N` restores while the archive downloads (issue 14, restore speed): the
//! definitions, then each table's data by parallel pg_restore processes as its block arrives
//! (a big table streams, small ones in batches), then post-data and privileges once the whole
//! object matched its checksum. What it must give is what one pg_restore of the archive gives,
//! compared here as `pg_dump` output; a damaged object must stop it before any table's data
//! commits and before post-data.

use crate::common::proxy::{Fault, FaultProxy, Rule};
use crate::common::*;

/// One big table (~25 MB of COPY text: it streams into its pg_restore while it downloads),
/// 120 small ones referencing it (batched), and the other kinds of entries each phase handles.
const SHOP_SQL: &str = r#"
create role shop_owner nologin;
create role shop_reader nologin;
create table events (id bigint primary key, at timestamptz, kind text, payload text);
insert into events
  select g, '2024-01-01'::timestamptz + g * interval '1 second', 'k' || (g % 7),
         md5(g::text) || md5((g * 3)::text)
  from generate_series(1, 250000) g;
create index events_kind on events (kind);
do $$ begin
  for i in 1..120 loop
    execute format('create table small_%s (id int primary key, event bigint references events(id), note text)', i);
    execute format('insert into small_%s select g, g, ''n'' || g from generate_series(1, %s) g', i, i);
  end loop;
end $$;
alter table small_7 owner to shop_owner;
comment on table events is 'everything that happened';
grant select on events to shop_reader;
revoke insert on small_3 from public;
alter table small_9 enable row level security;
create policy readers_see_some on small_9 for select to shop_reader using (id < 5);
create sequence ticket;
select setval('ticket', 4242);
create materialized view kinds as select kind, count(*) from events group by kind;
select lo_from_bytea(9001, 'large object one');
select lo_from_bytea(9002, 'large object two');
alter large object 9002 owner to shop_owner;
"#;

fn shop() -> Fixture {
    Fixture::builder("jobs")
        .databases(&[("shopdb", SHOP_SQL)])
        .start()
}

fn backup(fx: &Fixture, compression: &str) -> String {
    let out = fx
        .backup("shopdb")
        .env("PG_COMPRESSION", compression)
        .assert()
        .success();
    artifact_key(&out.get_output().stdout)
}

/// A proxy in front of moto that serves objects at `bytes_per_sec`.
fn slow_link(bytes_per_sec: usize) -> FaultProxy {
    let throttle = Fault::Throttle { bytes_per_sec };
    FaultProxy::start(
        &moto().endpoint,
        vec![Rule::new("GET", "GetObject", throttle)],
    )
}

/// The JSON log lines of a run's stderr with this message.
fn logged(stderr: &[u8], message: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == message)
        .collect()
}

#[test]
fn parallel_restore_while_downloading_equals_the_original() {
    let fx = shop();
    let pg = &fx.pg;
    let original = plain_dump(pg, "shopdb");
    assert!(original.contains("ALTER TABLE public.small_7 OWNER TO shop_owner"));

    for (compression, db) in [("zstd", "copy_zstd"), ("pg", "copy_pg")] {
        let key = backup(&fx, compression);
        pg.create_db(db);
        let a = fx
            .cmd()
            .args(["restore", &key, "--jobs", "3", "--to", &fx.url(db)])
            .assert()
            .success();
        let out = a.get_output();
        assert_eq!(summaries(&out.stdout)[0]["checksum_verified"], true);
        assert_eq!(
            plain_dump(pg, db),
            original,
            "{compression}: same as the original"
        );

        let batches = logged(&out.stderr, "restoring data");
        // The big table (first in the archive, and the largest) got a pg_restore of its own;
        // the 120 small tables and the large objects were shared among the other two.
        assert_eq!(batches[0]["entries"], 1, "{batches:?}");
        let entries: u64 = batches.iter().map(|b| b["entries"].as_u64().unwrap()).sum();
        assert_eq!(entries, 122, "{batches:?}");
        assert!(
            (3..20).contains(&batches.len()),
            "{} pg_restore runs: {batches:?}",
            batches.len()
        );
    }

    // --clean drops first, which only a whole pg_restore run does: restored after the
    // download instead, same result.
    let key = backup(&fx, "zstd");
    pg.psql("copy_zstd", "insert into small_1 values (100, 1, 'extra')");
    let a = fx
        .cmd()
        .args([
            "restore",
            &key,
            "--jobs",
            "2",
            "--clean",
            "--to",
            &fx.url("copy_zstd"),
        ])
        .assert()
        .success();
    assert!(logged(&a.get_output().stderr, "restoring data").is_empty());
    assert_eq!(plain_dump(pg, "copy_zstd"), original, "--clean --jobs");
}

/// The damage is a decode error in the big table while it loads: nothing of it commits, and
/// the message says no table data was committed.
#[test]
fn a_damaged_object_stops_the_parallel_restore_before_anything_of_it_commits() {
    let fx = shop();
    let pg = &fx.pg;
    for compression in ["zstd"] {
        let key = backup(&fx, compression);
        let mut body = moto().get(&fx.bucket, &key);
        if compression == "zstd" {
            // Late in the big table's data, which is most of the archive.
            let at = body.len() * 3 / 4;
            for b in &mut body[at..at + 64] {
                *b ^= 0x5a;
            }
        } else {
            // One row of the big table, late in it: `k3` becomes `K3`.
            let from = body.len() * 3 / 4;
            let at = from
                + body[from..]
                    .windows(4)
                    .position(|w| w == b"\tk3\t")
                    .unwrap();
            body[at + 1] = b'K';
        }
        let size = body.len();
        moto().put(&fx.bucket, &key, body);
        // A slow link: the definitions are restored and the big table is loading when the
        // damage arrives (the download takes about 4 s; at 1.5 s a loaded machine had not
        // committed the definitions yet when the checksum failed).
        let slow = slow_link(size / 4);

        let db = format!("damaged_{compression}");
        pg.create_db(&db);
        let tmp = tempfile::tempdir().unwrap();
        let a = fx
            .cmd()
            .env("AWS_ENDPOINT_URL", slow.endpoint())
            .env("TMPDIR", tmp.path())
            .args(["restore", &key, "--jobs", "2", "--to", &fx.url(&db)])
            .assert()
            .code(1);
        let out = a.get_output();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        let partly =
            format!("\"{db}\" is partly restored (definitions created, no table data committed");
        let batches = logged(&out.stderr, "restoring data");
        if compression == "zstd" {
            assert!(err.contains(&partly), "{err}");
            assert_eq!(
                batches[0]["streaming"], true,
                "the big table was loading: {batches:?}"
            );
        } else {
            // Whether the definitions were in yet depends on the machine's pace; no data is
            // committed either way, and the message never claims any.
            assert!(
                err.contains(&partly) || !err.contains("partly restored"),
                "{err}"
            );
        }
        // No data committed (not the damaged table, not any other), and post-data (indexes,
        // privileges) never ran.
        assert_eq!(pg.psql(&db, "select count(*) from events").trim(), "0");
        let small: u64 = (1..=120)
            .map(|i| {
                pg.psql(&db, &format!("select count(*) from small_{i}"))
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(small, 0, "{compression}: no table data committed");
        assert_eq!(
            pg.psql(
                &db,
                "select count(*) from pg_indexes where schemaname = 'public'"
            )
            .trim(),
            "0"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "temp files left"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
}

/// Why (issue 26): a changed character pg_restore accepts, in a table whose block arrives
/// whole while a bigger one is still downloading, used to commit with its corrupted row
/// (exit 1 "partly restored (… data of 9 of 10 tables loaded …)", the damaged table among
/// them). Now no table's data commits before the whole object matched its checksum: the
/// damaged table, and every other, holds nothing, and the message says so.
#[test]
fn a_damaged_table_never_commits_while_the_rest_downloads() {
    // Data is archived in name order: `a_orders` arrives whole, then `b_events` downloads.
    let fx = Fixture::builder("jobs-damage")
        .databases(&[(
            "twodb",
            "create table a_orders (id int primary key, note text);
             insert into a_orders select g, 'note-' || g from generate_series(1, 20000) g;
             create table b_events (id bigint, payload text);
             insert into b_events select g, md5(g::text) || md5((g * 3)::text)
               from generate_series(1, 250000) g;",
        )])
        .start();
    let pg = &fx.pg;
    let out = fx
        .backup("twodb")
        .env("PG_COMPRESSION", "none")
        .assert()
        .success();
    let key = artifact_key(&out.get_output().stdout);
    let mut body = moto().get(&fx.bucket, &key);
    let at = body
        .windows(11)
        .position(|w| w == b"\tnote-1234\n")
        .unwrap();
    body[at + 1] = b'N';
    let size = body.len();
    moto().put(&fx.bucket, &key, body);
    let slow = slow_link(size / 2);
    pg.create_db("target");
    let a = fx
        .cmd()
        .env("AWS_ENDPOINT_URL", slow.endpoint())
        .args(["restore", &key, "--jobs", "2", "--to", &fx.url("target")])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        !err.contains("tables and large-object sets committed"),
        "{err}"
    );
    assert_eq!(
        pg.psql("target", "select count(*) from a_orders").trim(),
        "0",
        "{err}"
    );
    assert_eq!(
        pg.psql("target", "select count(*) from b_events").trim(),
        "0",
        "{err}"
    );
    // Nor anything post-data builds on a committed table (issue 34 starts a table's indexes
    // once its data committed, which only a verified object allows): `a_orders` has no key.
    assert_eq!(
        pg.psql(
            "target",
            "select count(*) from pg_indexes where schemaname = 'public'"
        )
        .trim(),
        "0",
        "{err}"
    );
}

/// Ctrl-C (or ECS's SIGTERM) in the middle of a parallel restore: every pg_restore stops,
/// the download stops reading, the temp files go, and backhaul exits 130 at once.
#[test]
fn an_interrupted_parallel_restore_leaves_no_process_and_no_file() {
    let fx = shop();
    let pg = &fx.pg;
    let key = backup(&fx, "zstd");
    let size = moto().get(&fx.bucket, &key).len();
    // About 4 s for the whole object: the signal lands while the big table loads.
    let slow = slow_link(size / 4);
    pg.create_db("interrupted");
    let tmp = tempfile::tempdir().unwrap();
    let mut child = backhaul_std()
        .env("AWS_ENDPOINT_URL", slow.endpoint())
        .env("S3_BUCKET", &fx.bucket)
        .env("STAGE", "prod")
        .env("TMPDIR", tmp.path())
        .args([
            "restore",
            &key,
            "--jobs",
            "2",
            "--to",
            &fx.url("interrupted"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline - std::time::Instant::now())
            .expect("no data batch started");
        if line.contains("\"restoring data\"") {
            break;
        }
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("restore interrupted") && l.contains("partly")),
        "{rest:?}"
    );
    // No pg_restore is left connected to the target, and nothing of the big table committed.
    let sessions = || {
        pg.psql(
            "postgres",
            "select count(*) from pg_stat_activity where datname = 'interrupted'",
        )
        .trim()
        .to_string()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sessions() != "0" && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(sessions(), "0", "a pg_restore outlived backhaul");
    assert_eq!(
        pg.psql("interrupted", "select count(*) from events").trim(),
        "0"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temp files left"
    );
}

/// Issue 34: a table's indexes and constraints start once its data committed, while another
/// table still loads, as `pg_restore -j` does (they used to wait for every table's data).
/// Here the later table's COPY is held at its first row by an advisory lock the test holds
/// (its column's domain check takes the lock), so it cannot commit until the test lets go:
/// the earlier table's primary key must appear meanwhile, and the result is still the
/// original.
#[test]
fn a_tables_indexes_are_built_while_a_later_table_still_loads() {
    let fx = Fixture::builder("jobs-early-index")
        .databases(&[(
            "gatedb",
            "create function gate(v int) returns boolean language plpgsql
               as $$ begin perform pg_advisory_xact_lock_shared(42); return v is not null; end $$;
             create domain gated as int check (gate(value));
             create table a_big (id int primary key, payload text);
             insert into a_big select g, md5(g::text) || md5((g * 7)::text)
               from generate_series(1, 80000) g;
             create table b_gated (id gated, note text);
             insert into b_gated select g, 'n' || g from generate_series(1, 1000) g;",
        )])
        .start();
    let pg = &fx.pg;
    let original = plain_dump(pg, "gatedb");
    let out = fx
        .backup("gatedb")
        .env("PG_COMPRESSION", "zstd")
        .assert()
        .success();
    let key = artifact_key(&out.get_output().stdout);
    pg.create_db("target");

    // Hold the gate: a session of our own in the target database.
    let mut holder = std::process::Command::new(pg.bin.join("psql"))
        .args(["-X", "-q", "-U", "postgres", "-h"])
        .arg(pg.sock())
        .args(["-p", &pg.port.to_string(), "-d", "target"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut gate = holder.stdin.take().unwrap();
    use std::io::Write as _;
    writeln!(gate, "select pg_advisory_lock(42);").unwrap();
    let held = "select count(*) from pg_locks where locktype = 'advisory' and granted";
    let wait_for = |what: &str, sql: &str, want: &str| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while pg.psql("target", sql) != want {
            assert!(std::time::Instant::now() < until, "never saw {what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for("the gate held", held, "1");

    let mut cmd = fx.cmd();
    cmd.args([
        "restore",
        &key,
        "--jobs",
        "2",
        "--lock-timeout",
        "0",
        "--to",
        &fx.url("target"),
    ]);
    let restore = std::thread::spawn(move || cmd.output().unwrap());
    // `a_big`'s key is built while `b_gated`'s data cannot commit.
    wait_for(
        "a_big's primary key",
        "select count(*) from pg_indexes where tablename = 'a_big'",
        "1",
    );
    assert_eq!(pg.psql("target", "select count(*) from b_gated"), "0");
    assert_eq!(pg.psql("target", "select count(*) from a_big"), "80000");
    writeln!(gate, "select pg_advisory_unlock(42);").unwrap();
    drop(gate);
    let out = restore.join().unwrap();
    let _ = holder.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(plain_dump(pg, "target"), original);
}

/// A spool budget that is not a size is a setting to fix: exit 2, one line naming where it was
/// set, nothing touched (AWS points at a closed port: any call would fail differently).
#[test]
fn a_bad_spool_budget_exits_2_with_one_line() {
    for (flag, budget, expected) in [
        (
            true,
            "lots",
            "error: --spool-budget \"lots\" is not a size: use e.g. 2GiB or 500MiB",
        ),
        (
            false,
            "1MiB",
            "error: RESTORE_SPOOL_BUDGET \"1MiB\" is below the minimum of 64 MiB",
        ),
    ] {
        let mut cmd = backhaul();
        cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("S3_BUCKET", "bkt")
            .env("STAGE", "prod")
            .args([
                "restore",
                "latest",
                "--kind",
                "postgres",
                "--database",
                "d",
                "--jobs",
                "2",
                "--to",
                "postgresql://u@127.0.0.1:9/d",
            ]);
        if flag {
            cmd.args(["--spool-budget", budget]);
        } else {
            cmd.env("RESTORE_SPOOL_BUDGET", budget);
        }
        let out = cmd.assert().code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, vec![expected], "{budget}");
    }
}

/// A partitioned table has no data block of its own: its rows are in its partitions. A
/// foreign key on it (which PostgreSQL adds to every partition) and its partitioned index run
/// only once every table's data committed, and the result is what one pg_restore gives.
#[test]
fn partitioned_tables_restore_in_parallel_as_the_original() {
    const SQL: &str = r#"
create table customers (id int primary key, name text);
insert into customers select g, 'c' || g from generate_series(1, 2000) g;
create table orders (id bigint, customer int, at date not null, total numeric)
  partition by range (at);
create table orders_2023 partition of orders for values from ('2023-01-01') to ('2024-01-01');
create table orders_2024 partition of orders for values from ('2024-01-01') to ('2025-01-01');
insert into orders select g, 1 + g % 2000, date '2023-01-01' + (g % 700), g * 1.5
  from generate_series(1, 60000) g;
alter table orders add primary key (id, at);
create index orders_customer on orders (customer);
alter table orders add constraint orders_customer_fkey foreign key (customer) references customers(id);
"#;
    let fx = Fixture::builder("jobsparts")
        .databases(&[("parts", SQL)])
        .start();
    let pg = &fx.pg;
    let original = plain_dump(pg, "parts");
    assert!(
        original.contains("ATTACH PARTITION public.orders_2024"),
        "{original}"
    );
    let out = fx.backup("parts").assert().success();
    let key = artifact_key(&out.get_output().stdout);
    pg.create_db("parts_copy");
    fx.cmd()
        .args([
            "restore",
            &key,
            "--jobs",
            "2",
            "--to",
            &fx.url("parts_copy"),
        ])
        .assert()
        .success();
    assert_eq!(plain_dump(pg, "parts_copy"), original);
    assert_eq!(
        pg.psql("parts_copy", "select count(*) from orders_2024"),
        pg.psql("parts", "select count(*) from orders_2024")
    );
}

/// Issue 34: the last table's pg_restore, started while its table still arrives, is fed from
/// the download through memory, not the spool file (here the only table, as in the bench's
/// default dataset); the result is the original, and a damaged object still commits nothing
/// of it, nor its indexes, and leaves no temp file.
#[test]
fn the_last_table_is_fed_from_the_download_and_commits_only_verified_bytes() {
    let fx = Fixture::builder("jobs-direct")
        .databases(&[(
            "onedb",
            "create table events (id bigint primary key, kind text, payload text);
             insert into events select g, 'k' || (g % 7), md5(g::text) || md5((g * 3)::text)
               from generate_series(1, 250000) g;
             create index events_kind on events (kind);",
        )])
        .start();
    let pg = &fx.pg;
    let original = plain_dump(pg, "onedb");
    let out = fx
        .backup("onedb")
        .env("PG_COMPRESSION", "zstd")
        .assert()
        .success();
    let key = artifact_key(&out.get_output().stdout);
    let good = moto().get(&fx.bucket, &key);
    // About 5 s for the object: the table is still arriving when its pg_restore starts.
    let slow = slow_link(good.len() / 5);
    pg.create_db("direct");
    let a = fx
        .cmd()
        .env("AWS_ENDPOINT_URL", slow.endpoint())
        .args(["restore", &key, "--jobs", "2", "--to", &fx.url("direct")])
        .assert()
        .success();
    let batches = logged(&a.get_output().stderr, "restoring data");
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0]["streaming"], true, "{batches:?}");
    assert_eq!(batches[0]["direct"], true, "{batches:?}");
    assert_eq!(plain_dump(pg, "direct"), original);

    // Damaged late in the table: it was flowing into its COPY from memory when the damage
    // arrived; nothing of it commits.
    let mut body = good;
    let at = body.len() * 3 / 4;
    for b in &mut body[at..at + 64] {
        *b ^= 0x5a;
    }
    moto().put(&fx.bucket, &key, body);
    pg.create_db("damaged");
    let tmp = tempfile::tempdir().unwrap();
    let a = fx
        .cmd()
        .env("AWS_ENDPOINT_URL", slow.endpoint())
        .env("TMPDIR", tmp.path())
        .args(["restore", &key, "--jobs", "2", "--to", &fx.url("damaged")])
        .assert()
        .code(1);
    let out = a.get_output();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains("no table data committed"),
        "the message says nothing committed: {err}"
    );
    assert_eq!(
        logged(&out.stderr, "restoring data")[0]["direct"],
        true,
        "{err}"
    );
    assert_eq!(
        pg.psql("damaged", "select count(*) from events").trim(),
        "0"
    );
    assert_eq!(
        pg.psql(
            "damaged",
            "select count(*) from pg_indexes where schemaname = 'public'"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temp files left"
    );
}
