#!/usr/bin/env bash
# Builds docker/Dockerfile with podman (no Docker engine: Debian's podman + runc + mmdebstrap)
# from local sources only, and smoke-tests the image the way Fargate runs it: as the image's
# own user, against a real PostgreSQL and a local S3 (moto) on the host network.
#
# What it proves: the Dockerfile's stages, COPY paths, user and entrypoint work; the binary
# runs in the image (shared libraries, CA bundle path, writable /tmp for uid 10001); pg_dump,
# pg_restore and the mongo tools are on PATH; a real backup -> verify -> restore round trip
# from inside the container gives a database whose pg_dump equals the original's.
# What it cannot prove here (not reachable from this network): the production defaults, i.e.
# the PGDG client 18, MongoDB's mongodb-database-tools package, the official base images and
# the in-image cargo build. Those stages are the same file, built only with the defaults.
#
# Local build (closed network): BASE_IMAGE made with mmdebstrap (cached in podman's storage),
# BINARY_FROM=prebuilt (the host's release build, same profile settings as the builder stage:
# building inside the container would compile every dependency again, ~2x the CI time),
# TOOLS_FROM=local (Debian's postgresql-client, ../shared/mongo-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/setup.sh
VENV="${BACKHAUL_VENV:-/opt/backhaul-venv}"
MONGO_TOOLS="${MONGO_TOOLS_DIR:-$ROOT/../shared/mongo-tools}"
BASE="${IMAGE_TEST_BASE:-localhost/backhaul-base:bookworm}"
IMAGE="localhost/backhaul:image-test"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
started=$(date +%s)

missing=()
for tool in podman mmdebstrap runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "image-test: installing ${missing[*]} from Debian's packages" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    podman mmdebstrap runc uidmap >/dev/null
fi
# crun fails on this machine's hybrid cgroups, and podman's default ulimits are refused here.
P=(podman --runtime runc --cgroup-manager=cgroupfs)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

WORK=$(mktemp -d /tmp/backhaul-image.XXXXXX)
chmod 755 "$WORK"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
  [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  "${P[@]}" rm -f backhaul-image-test >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The Debian base, as the official slim image is made (no docs, man pages or locales).
if ! "${P[@]}" image exists "$BASE"; then
  echo "== base image $BASE: mmdebstrap bookworm (minbase)" >&2
  mmdebstrap --quiet --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$WORK/rootfs.tar"
  "${P[@]}" import "$WORK/rootfs.tar" "$BASE" >/dev/null
  rm -f "$WORK/rootfs.tar"
else
  echo "== base image $BASE: cached" >&2
fi

# 2. The release binary, with the builder stage's profile settings (stripped, no debug info).
echo "== release build (CARGO_PROFILE_RELEASE_DEBUG=0, STRIP=symbols)" >&2
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked --target-dir "$ROOT/target/image"

# 3. A build context with only what the local mode copies.
CTX="$WORK/context"
mkdir -p "$CTX/prebuilt" "$CTX/mongo-tools"
cp "$ROOT/target/image/release/backhaul" "$CTX/prebuilt/backhaul"
cp "$MONGO_TOOLS/mongodump" "$MONGO_TOOLS/mongorestore" "$CTX/mongo-tools/"
echo "== podman build (BASE_IMAGE=$BASE BINARY_FROM=prebuilt TOOLS_FROM=local)" >&2
"${P[@]}" build --quiet --format docker --network host "${LIMITS[@]}" \
  -f "$ROOT/docker/Dockerfile" \
  --build-arg BASE_IMAGE="$BASE" --build-arg BINARY_FROM=prebuilt --build-arg TOOLS_FROM=local \
  --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -t "$IMAGE" "$CTX" >/dev/null
run() { "${P[@]}" run --rm --network host "${LIMITS[@]}" "$@"; }
fail() { echo "image-test: FAILED: $*" >&2; exit 1; }

# 4. What the image is.
user=$("${P[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "image user is '$user' (root)"
uid=$(run --entrypoint id "$IMAGE" -u)
[ "$uid" = 10001 ] || fail "container runs as uid $uid, expected 10001"
"${P[@]}" create --name backhaul-image-test "$IMAGE" >/dev/null
"${P[@]}" cp backhaul-image-test:/usr/local/bin/backhaul "$WORK/backhaul.image"
"${P[@]}" rm backhaul-image-test >/dev/null
sections=$(readelf -S "$WORK/backhaul.image")
if grep -Eq '\.symtab|\.debug_' <<<"$sections"; then fail "the image's binary is not stripped"; fi
size=$("${P[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "image: $IMAGE, user $user, binary stripped ($(du -h "$WORK/backhaul.image" | cut -f1)), size $((size / 1000000)) MB" >&2

# 5. The tools, as the image's user.
run "$IMAGE" --version
run --entrypoint pg_dump "$IMAGE" --version
run --entrypoint pg_restore "$IMAGE" --version
# Read whole, then cut: a pipe into `head` closes early and podman's attach fails (EPIPE).
for tool in mongodump mongorestore; do
  v=$(run --entrypoint "$tool" "$IMAGE" --version)
  echo "${v%%$'\n'*}"
done

# 6. A real round trip from inside the container: PostgreSQL and moto on the host.
PGPORT=$(free_port); S3PORT=$(free_port)
mkdir -p "$WORK/data" "$WORK/sock"
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/data" "$WORK/sock"; fi
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/data/server.log" -w \
  -o "-p $PGPORT -k $WORK/sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
psql_su() { "$PGBIN/psql" -X -q -h "$WORK/sock" -p "$PGPORT" -U postgres "$@"; }
psql_su -c "create role app login password 'img:p@ss/word'" -c "create database shop owner app" \
  -c "create database shop_restored owner app"
"$PGBIN/pgbench" -q -i -s 2 -h "$WORK/sock" -p "$PGPORT" -U app shop 2>/dev/null
"$PGBIN/psql" -X -q -h "$WORK/sock" -p "$PGPORT" -U app -d shop \
  -c "create table orders (id serial primary key, customer text, items jsonb, placed timestamptz)" \
  -c "insert into orders (customer, items, placed) select 'customer ' || g, jsonb_build_object('sku', 'sku-' || (g % 97)), timestamptz '2026-01-01' + g * interval '37 minutes' from generate_series(1, 5000) g"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$S3PORT) 2>/dev/null && break; sleep 0.2; done
"$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$S3PORT', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x').create_bucket(Bucket='backhaul-image')"

# The variables a task definition sets; the password only in the environment.
ENVS=(-e AWS_ENDPOINT_URL="http://127.0.0.1:$S3PORT" -e AWS_ACCESS_KEY_ID=image -e AWS_SECRET_ACCESS_KEY=image
      -e AWS_REGION=us-east-1 -e S3_FORCE_PATH_STYLE=true -e S3_BUCKET=backhaul-image -e STAGE=image
      -e BACKHAUL_LOG_FORMAT=text -e PG_DB_HOST=127.0.0.1 -e PG_DB_PORT="$PGPORT" -e PG_DB_USER=app
      -e PG_DB_PASSWORD='img:p@ss/word' -e PG_DB_NAME=shop)
echo "== in the container: backhaul backup / list / verify / restore" >&2
run "${ENVS[@]}" -e BACKUP_GLOBALS=off "$IMAGE" backup
run "${ENVS[@]}" "$IMAGE" list
run "${ENVS[@]}" "$IMAGE" verify latest --database shop
run "${ENVS[@]}" -e RESTORE_TO="postgresql://app:img%3Ap%40ss%2Fword@127.0.0.1:$PGPORT/shop_restored" \
  "$IMAGE" restore latest --database shop

# Compared as the native tools see them: pg_dump of each (owners and ACLs included).
dump() { "$PGBIN/pg_dump" -h "$WORK/sock" -p "$PGPORT" -U postgres "$1" | grep -v '^\\\(un\)\?restrict '; }
dump shop >"$WORK/a.sql"; dump shop_restored >"$WORK/b.sql"
if ! diff -q "$WORK/a.sql" "$WORK/b.sql" >/dev/null; then
  diff "$WORK/a.sql" "$WORK/b.sql" | head -20 >&2 || true
  fail "the database restored from inside the container differs from the original"
fi
rows=$(psql_su -At -d shop_restored -c "select count(*) from pgbench_accounts")
echo "image-test: OK ($rows accounts restored, pg_dump identical; $(( $(date +%s) - started )) s)"
