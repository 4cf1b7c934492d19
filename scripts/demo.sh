#!/usr/bin/env bash
# The main job, end to end, on this machine: a local PostgreSQL with a sample database and a
# local S3 (moto), then backhaul backup -> list -> verify -> restore, and a check that the
# restored database equals the original. Everything runs in a temp dir and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV="${BACKHAUL_VENV:-/opt/backhaul-venv}"
SCALE="${DEMO_SCALE:-10}"   # pgbench scale: 10 is ~150 MB of data

echo "== building backhaul (the first build compiles the AWS SDK: a few minutes on 2 cores)" >&2
cargo build --locked
BACKHAUL="$PWD/target/debug/backhaul"

WORK=$(mktemp -d /tmp/backhaul-demo.XXXXXX)
chmod 755 "$WORK"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); S3PORT=$(free_port)
cleanup() {
  [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting PostgreSQL on 127.0.0.1:$PGPORT and moto (S3) on 127.0.0.1:$S3PORT" >&2
mkdir -p "$WORK/data" "$WORK/sock"
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/data" "$WORK/sock"; fi
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/data/server.log" -w \
  -o "-p $PGPORT -k $WORK/sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
psql_su() { "$PGBIN/psql" -X -q -h "$WORK/sock" -p "$PGPORT" -U postgres "$@"; }
psql_su -c "create role demo login superuser password 'dem0:p@ss/word'" -c "create database shop owner demo"
echo "== creating the sample database 'shop' (pgbench scale $SCALE)" >&2
"$PGBIN/pgbench" -q -i -s "$SCALE" -h "$WORK/sock" -p "$PGPORT" -U postgres shop 2>/dev/null
# pgbench -i leaves every balance at 0 and the history empty: run some transactions so the
# data is varied, and the comparison below can tell a right restore from a wrong one.
"$PGBIN/pgbench" -n -c 4 -t 500 -h "$WORK/sock" -p "$PGPORT" -U postgres shop >/dev/null 2>&1
psql_su -d shop -c "create table orders (id serial primary key, customer text, items jsonb, placed timestamptz)" \
  -c "insert into orders (customer, items, placed) select 'customer ' || g, jsonb_build_object('sku', 'sku-' || (g % 97), 'qty', g % 7 + 1), timestamptz '2026-01-01' + g * interval '37 minutes' from generate_series(1, 20000) g"

export AWS_ENDPOINT_URL="http://127.0.0.1:$S3PORT" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
export S3_FORCE_PATH_STYLE=true S3_BUCKET=backhaul-demo STAGE=demo BACKHAUL_LOG_FORMAT=text
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$S3PORT) 2>/dev/null && break; sleep 0.2; done
"$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='$S3_BUCKET')"

# The same variables a team's ECS task definition sets today.
export PG_DB_HOST=127.0.0.1 PG_DB_PORT=$PGPORT PG_DB_USER=demo PG_DB_PASSWORD='dem0:p@ss/word' PG_DB_NAME=shop

echo; echo "\$ backhaul backup"
"$BACKHAUL" backup
echo; echo "\$ backhaul list"
"$BACKHAUL" list
echo; echo "\$ backhaul verify latest --database shop"
"$BACKHAUL" verify latest --database shop
echo; echo "\$ backhaul list   # now marked verified"
"$BACKHAUL" list
echo; echo "\$ backhaul restore latest --database shop --to postgresql://demo:***@127.0.0.1:$PGPORT/shop_restored"
psql_su -c "create database shop_restored owner demo"
RESTORE_TO="postgresql://demo:dem0%3Ap%40ss%2Fword@127.0.0.1:$PGPORT/shop_restored" "$BACKHAUL" restore latest --database shop

echo; echo "== comparing original and restored databases, table by table, by content" >&2
# Per table: row count and an md5 over every row in a fixed order, so a missing, extra or
# changed row anywhere changes the digest; plus the schema as pg_dump prints it.
fingerprint() {
  local db=$1 t
  for t in $(psql_su -At -d "$db" -c "select tablename from pg_tables where schemaname = 'public' order by 1"); do
    printf '%s %s\n' "$t" "$(psql_su -At -d "$db" -c "select count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x::text, '|' order by x::text), '')) from \"$t\" x")"
  done
  "$PGBIN/pg_dump" -h "$WORK/sock" -p "$PGPORT" -U postgres --schema-only "$db" | tee "$WORK/schema-$db.sql" | grep -v '^\\\(un\)\?restrict ' | md5sum | sed 's/ .*//; s/^/schema md5 /'
}
a=$(fingerprint shop); b=$(fingerprint shop_restored)
echo "original:"; echo "$a" | sed 's/^/  /'
echo "restored:"; echo "$b" | sed 's/^/  /'
sum=$(psql_su -At -d shop_restored -c "select sum(abalance) || ' over ' || count(*) filter (where abalance <> 0) || ' changed accounts' from pgbench_accounts")
echo "  (balances: $sum)"
if [ "$a" = "$b" ]; then
  echo "demo: OK, the restored database matches the original row for row"
else
  diff "$WORK/schema-shop.sql" "$WORK/schema-shop_restored.sql" | head -20 || true
  echo "demo: MISMATCH between the original and the restored database"; exit 1
fi
