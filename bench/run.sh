#!/usr/bin/env bash
# Benchmark harness for `backhaul backup`: one command, run from anywhere (as root, or with sudo).
#
#   bash bench/run.sh
#
# It starts a throwaway PostgreSQL (temp dir, random port, fsync=off) and a local S3 server,
# generates a database of roughly BENCH_SIZE_MB with realistic mixed data, then times six ways of
# producing a backup, interleaved round-robin for BENCH_REPEAT repetitions, each under
# GNU `/usr/bin/time -v` (wall, user+sys CPU, max RSS):
#   1 floor     pg_dump -Fc -Z0 > /dev/null                         (no compression, no upload)
#   2 script    pg_dump -F c -f FILE, then boto3 upload_file(FILE)  (today's script; = aws s3 cp)
#   3 pipeline  pg_dump -Fc -Z0 | zstd -3 -T2 | boto3 upload_fileobj(stdin)
#   4 bh_zstd   backhaul backup, PG_COMPRESSION=zstd
#     (only when named in BENCH_CASES: bh_zstd_st the same with PG_ZSTD_THREADS=1, one zstd
#     worker; bh_zstd_alt the same with the binary BENCH_ALT_BIN, another build; bh_jobs_none
#     PG_JOBS=J without compression)
#   5 bh_pg     backhaul backup, PG_COMPRESSION=pg
#   6 bh_none   backhaul backup, PG_COMPRESSION=none
# then (unless BENCH_RESTORE=0) five ways of restoring the same archive into an empty database,
# interleaved the same way:
#   r_local_1tx  pg_restore --single-transaction from a local file
#   r_local_jobs pg_restore -j N from a local file
#   r_download   boto3 download_file, then pg_restore --single-transaction (today's runbook)
#   r_bh_stream  backhaul restore (S3 -> sha256 -> zstd -> pg_restore --single-transaction, streamed)
#   r_bh_jobs    backhaul restore --jobs N (N pg_restore processes fed while the object downloads)
# backup --jobs (issue 32), interleaved with the cases above (groups backup-jobs, restore-dir):
#   floor_par        pg_dump -Fd -j J -Z0 --no-sync to a local directory (the parallel floor)
#   bh_jobs          backhaul backup, PG_JOBS=J PG_COMPRESSION=zstd (spool in the run's TMPDIR)
#   r_local_dir_jobs pg_restore -j J from a local directory dump (pg_dump -Fd -j J -Z0)
#   r_bh_dir_jobs    backhaul restore --jobs J of a PG_JOBS=J backup; after its last repetition
#                    the restored database's plain pg_dump is compared with the source's
# and prints/writes a table (min/median wall, CPU, peak RSS, local disk, object size, x floor)
# plus PASS/FAIL for backhaul's targets. Everything it starts is stopped and removed on exit.
#
# Knobs (environment):
#   BENCH_SIZE_MB  approximate database size in MB (default 1300)
#   BENCH_SIZES    several sizes, e.g. "650 1300": runs each, adds a peak-RSS flatness table
#   BENCH_REPEAT   repetitions per case (default 3)
#   BENCH_BIN      backhaul binary (default target/release/backhaul; not built by this script)
#   BENCH_S3       moto (default; Python, may be the bottleneck), s3s (s3s-fs, Rust, faster) or
#                  file (restore cases only: the object in a local directory, the fastest link)
#   BENCH_RESTORE  1 (default) times the restore cases too; 0 skips them
#   BENCH_BACKUP   1 (default) times the backup cases; 0 skips them (restore figures only)
#   BENCH_RESTORE_JOBS  N for the -j / --jobs cases (default: nproc)
#   BENCH_JOBS     J for the backup --jobs cases above (default 2)
#   BENCH_DATASETS what to generate, one or more of: events (default: one wide table with a
#                  primary key and an index), two (events and a copy of it, events2, with the
#                  same indexes: two big tables), many (200 tables of mixed sizes, each with a
#                  primary key and an index; bench/generate-many.sql). BENCH_SIZE_MB is the
#                  whole database's size in each.
#   BENCH_CASES    which cases to time (default: all): case names, or the groups backup,
#                  restore, restore-jobs (r_local_1tx r_local_jobs r_bh_jobs: what the --jobs
#                  target and its validity check need), e.g.
#                    BENCH_CASES=restore-jobs BENCH_DATASETS="two many" BENCH_SIZE_MB=600 bash bench/run.sh
#                  backup-jobs = floor bh_zstd floor_par bh_jobs; restore-dir = r_local_1tx
#                  r_local_dir_jobs r_bh_dir_jobs (the backup --jobs targets and their validity)
#
# Validity: a run in which local `pg_restore -j N` is not clearly faster than local `-1`
# (median above 0.85x) says nothing about what --jobs should reach on this machine; the
# report then marks the --jobs target INVALID (no verdict) instead of PASS or FAIL.
#   BENCH_OUT      where <timestamp>.json and <timestamp>.md go (default bench/results, git-ignored)
#   BACKHAUL_VENV  Python venv with moto and boto3 (default /opt/backhaul-venv, made by scripts/setup.sh)
# Exit status: 0 when every run completed (targets may still FAIL: read the table), 1 when a run
# failed, 2 when a prerequisite (binary, s3s-fs) is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SIZES="${BENCH_SIZES:-${BENCH_SIZE_MB:-1300}}"
REPEAT="${BENCH_REPEAT:-3}"
BIN="${BENCH_BIN:-target/release/backhaul}"
S3KIND="${BENCH_S3:-moto}"
OUT="${BENCH_OUT:-bench/results}"
VENV="${BACKHAUL_VENV:-/opt/backhaul-venv}"
RESTORE="${BENCH_RESTORE:-1}"
BACKUP="${BENCH_BACKUP:-1}"
RJOBS="${BENCH_RESTORE_JOBS:-$(nproc)}"
DATASETS="${BENCH_DATASETS:-events}"
CASES=(floor script pipeline bh_zstd bh_pg bh_none)
# Only when named in BENCH_CASES: bh_zstd variants, to measure one change at a time.
EXTRA_CASES=(bh_zstd_st bh_zstd_alt bh_jobs_none)
ALT_BIN="${BENCH_ALT_BIN:-}"
RESTORE_CASES=(r_local_1tx r_local_jobs r_download r_bh_stream r_bh_jobs)
# backup --jobs (issue 32): its cases join the backup and restore groups; its own groups are
# expanded here, before the case names are checked.
BJOBS="${BENCH_JOBS:-2}"
[[ "$BJOBS" =~ ^[0-9]+$ ]] && [ "$BJOBS" -ge 1 ] || { echo "bench: error: BENCH_JOBS must be a positive integer, got '$BJOBS'" >&2; exit 1; }
CASES+=(floor_par bh_jobs)
RESTORE_CASES+=(r_local_dir_jobs r_bh_dir_jobs)
jobs_cases=" "
for c in ${BENCH_CASES:-backup restore}; do
  case "$c" in
    backup-jobs) jobs_cases+="floor bh_zstd floor_par bh_jobs bh_jobs_none " ;;
    restore-dir) jobs_cases+="r_local_1tx r_local_dir_jobs r_bh_dir_jobs " ;;
    *) jobs_cases+="$c " ;;
  esac
done
BENCH_CASES=$jobs_cases
SELECTED=" "
for c in ${BENCH_CASES:-backup restore}; do
  case "$c" in
    backup) SELECTED+="${CASES[*]} " ;;
    restore) SELECTED+="${RESTORE_CASES[*]} " ;;
    restore-jobs) SELECTED+="r_local_1tx r_local_jobs r_bh_jobs " ;;
    *) [[ " ${CASES[*]} ${EXTRA_CASES[*]} ${RESTORE_CASES[*]} " == *" $c "* ]] || { echo "bench: error: unknown case '$c' in BENCH_CASES (cases: ${CASES[*]} ${EXTRA_CASES[*]} ${RESTORE_CASES[*]}; groups: backup restore restore-jobs)" >&2; exit 1; }
       SELECTED+="$c " ;;
  esac
done
selected() { [[ "$SELECTED" == *" $1 "* ]]; }
any_selected() { local c; for c in "$@"; do selected "$c" && return 0; done; return 1; }
any_selected "${CASES[@]}" "${EXTRA_CASES[@]}" || BACKUP=0
if selected bh_zstd_alt; then
  [ -n "$ALT_BIN" ] || { echo "bench: error: bh_zstd_alt needs BENCH_ALT_BIN (another backhaul build to compare with)" >&2; exit 1; }
  case "$ALT_BIN" in /*) ;; *) ALT_BIN="$PWD/$ALT_BIN" ;; esac
  [ -x "$ALT_BIN" ] || { echo "bench: error: BENCH_ALT_BIN=$ALT_BIN is not an executable" >&2; exit 2; }
fi
any_selected "${RESTORE_CASES[@]}" || RESTORE=0
for d in $DATASETS; do case "$d" in events|two|many) ;; *) echo "bench: error: BENCH_DATASETS: unknown dataset '$d' (events, two, many)" >&2; exit 1 ;; esac; done

die() { echo "bench: error: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

for s in $SIZES; do [[ "$s" =~ ^[0-9]+$ ]] && [ "$s" -ge 10 ] || die "sizes must be whole MB >= 10, got '$s'"; done
[[ "$REPEAT" =~ ^[0-9]+$ ]] && [ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be a positive integer, got '$REPEAT'"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
if [ ! -x "$BIN" ]; then
  echo "bench: backhaul binary not found at $BIN" >&2
  echo "bench: build it first (this script does not build), then run again:" >&2
  echo "    (cd $ROOT && cargo build --release --locked)" >&2
  echo "bench: or point BENCH_BIN at an existing binary, e.g. BENCH_BIN=target/debug/backhaul (debug figures are not representative)" >&2
  exit 2
fi
case "$S3KIND" in
  moto) ;;
  s3s)
    S3S_FS=$(command -v s3s-fs || true)
    [ -z "$S3S_FS" ] && [ -x "$HOME/.cargo/bin/s3s-fs" ] && S3S_FS="$HOME/.cargo/bin/s3s-fs"
    if [ -z "$S3S_FS" ]; then
      echo "bench: BENCH_S3=s3s needs s3s-fs on PATH; install it with:" >&2
      echo "    cargo install s3s-fs@0.14.1 --features binary --locked" >&2
      exit 2
    fi ;;
  file) # restore cases only: the object in a local directory, the fastest link there is
    selected r_download && die "BENCH_S3=file has no S3 server for r_download: leave it out of BENCH_CASES"
    [ "$BACKUP" = 1 ] && any_selected script pipeline && die "BENCH_S3=file has no S3 server for script and pipeline: leave them out of BENCH_CASES (e.g. BENCH_CASES=backup-jobs)" ;;
  *) die "BENCH_S3 must be moto, s3s or file, got '$S3KIND'" ;;
esac
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
mkdir -p "$OUT" || die "cannot create BENCH_OUT=$OUT"

say "setup (scripts/setup.sh)"
scripts/setup.sh
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
[ -x /usr/bin/time ] || missing+=(time)
command -v zstd >/dev/null || missing+=(zstd)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY="$VENV/bin/python"
[ -x "$PY" ] || die "$PY missing (scripts/setup.sh should have made it)"
S3UTIL="$ROOT/bench/s3util.py"

WORK=$(mktemp -d /tmp/backhaul-bench.XXXXXX)
chmod 755 "$WORK"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PG_DUMP="$PGBIN/pg_dump"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); S3PORT=$(free_port)
S3_PID=""; SAMPLER_PID=""
cleanup() {
  local rc=$?
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null && wait "$S3_PID" 2>/dev/null || true
  [ -d "$WORK/data" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

say "starting PostgreSQL $(basename "$(dirname "$PGBIN")") on 127.0.0.1:$PGPORT (data in $WORK, fsync=off)"
mkdir -p "$WORK/data" "$WORK/sock"
if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/data" "$WORK/sock"; fi
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null \
  || die "initdb failed"
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/data/server.log" -w \
  -o "-p $PGPORT -k $WORK/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB" \
  start >/dev/null || { tail -20 "$WORK/data/server.log" >&2 || true; die "PostgreSQL did not start"; }
psql_su() { PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PGPORT" -U postgres "$@"; }
psql_su -c "create role bench login superuser password 'bench'" >/dev/null

export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3PORT"
mkdir -p "$WORK/s3"
if [ "$S3KIND" = file ]; then
  S3_SHORT=file
  S3_DESC="none: the object in a local directory (BACKUP_DEST=file://), the fastest link"
  mkdir -p "$WORK/s3/store"
elif [ "$S3KIND" = moto ]; then
  S3_SHORT=moto
  S3_DESC="moto_server $("$PY" -c 'import moto; print(moto.__version__)') (Python, in-memory)"
  # moto spools object bodies to temp files; keep them out of the measured TMPDIRs.
  TMPDIR="$WORK/s3" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3PORT" >"$WORK/s3.log" 2>&1 &
else
  S3_SHORT=s3s-fs
  S3_DESC="$("$S3S_FS" --version 2>/dev/null | head -1 || echo s3s-fs) (Rust, files on local disk)"
  mkdir -p "$WORK/s3/data"
  "$S3S_FS" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    --host 127.0.0.1 --port "$S3PORT" "$WORK/s3/data" >"$WORK/s3.log" 2>&1 &
fi
BUCKET=backhaul-bench
if [ "$S3KIND" != file ]; then
  S3_PID=$!
  say "starting S3 server: $S3_DESC on $AWS_ENDPOINT_URL"
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null && break; sleep 0.2; done
  kill -0 "$S3_PID" 2>/dev/null || { cat "$WORK/s3.log" >&2; die "S3 server exited"; }
  "$PY" "$S3UTIL" create-bucket "$BUCKET" || { tail -20 "$WORK/s3.log" >&2; die "could not create bucket on $AWS_ENDPOINT_URL"; }
fi
object_bytes() { # total size of the stored artifacts, manifests excluded
  if [ "$S3KIND" = file ]; then
    find "$WORK/s3/store" -type f ! -name '*.manifest.json' -printf '%s\n' | awk '{t += $1} END {printf "%d", t}'
  else "$PY" "$S3UTIL" object-bytes "$BUCKET" | awk '{print $1}'; fi
}
clear_store() { if [ "$S3KIND" = file ]; then rm -rf "$WORK/s3/store"/*; else "$PY" "$S3UTIL" clear "$BUCKET"; fi; }

# pg_dump (cases 1-3) and backhaul (4-6) connect the same way: TCP, password auth.
export PGHOST=127.0.0.1 PGPORT PGUSER=bench PGPASSWORD=bench
export PG_DB_HOST=127.0.0.1 PG_DB_PORT=$PGPORT PG_DB_USER=bench PG_DB_PASSWORD=bench PG_DUMP_PATH="$PG_DUMP"
export STAGE=bench BACKHAUL_LOG_FORMAT=text
if [ "$S3KIND" = file ]; then export BACKUP_DEST="file://$WORK/s3/store"; else export S3_BUCKET=$BUCKET S3_FORCE_PATH_STYLE=true; fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$WORK/raw.jsonl"; : >"$RAW"
SIZES_JSON="$WORK/sizes.jsonl"; : >"$SIZES_JSON"
FAILED=0

gen_dataset() { # $1 dataset, $2 rows (events: rows of events; two: of each table; many: shared by the 200 tables)
  case "$1" in
    events) psql_su -d "$DB" -v n="$2" -f "$ROOT/bench/generate.sql" >/dev/null ;;
    two) psql_su -d "$DB" -v n="$2" -f "$ROOT/bench/generate.sql" >/dev/null
         psql_su -d "$DB" -c "drop table if exists events2" -c "create table events2 as select * from events" \
           -c "alter table events2 add primary key (id)" \
           -c "create index events2_account_created on events2 (account_id, created_at)" >/dev/null ;;
    many) psql_su -d "$DB" -v n="$2" -f "$ROOT/bench/generate-many.sql" >/dev/null ;;
  esac
}

make_db() { # $1 = size in MB, $2 = dataset; sets DB, DB_BYTES, ROWS
  local size=$1 dataset=$2 base bpr sample=50000
  DB="bench_${dataset}_$size"
  psql_su -c "drop database if exists $DB" -c "create database $DB owner bench" >/dev/null
  base=$(psql_su -At -d "$DB" -c "select pg_database_size(current_database())")
  # Measure bytes per row (tables + toast + indexes) on a sample, then size the real data.
  gen_dataset "$dataset" $sample
  bpr=$(psql_su -At -d "$DB" -c "select (pg_database_size(current_database()) - $base)::float8 / $sample")
  ROWS=$(awk -v s="$size" -v b="$base" -v r="$bpr" 'BEGIN { n = (s * 1048576 - b) / r; if (n < 1000) n = 1000; printf "%d", n }')
  say "generating ~$size MB of dataset $dataset: $ROWS rows (~$(printf '%.0f' "$bpr") bytes/row with indexes)"
  local t0=$SECONDS
  gen_dataset "$dataset" "$ROWS"
  psql_su -d "$DB" -c "vacuum analyze" -c "checkpoint" >/dev/null
  DB_BYTES=$(psql_su -At -d "$DB" -c "select pg_database_size(current_database())")
  say "database $DB: $(awk -v b="$DB_BYTES" 'BEGIN{printf "%.1f MiB", b/1048576}') (pg_database_size), generated in $((SECONDS - t0))s"
}

sample_disk() { # $1 dir, $2 output file: largest total of the disk blocks the files under $1 hold
  # Allocated blocks, not sizes: restore --jobs punches restored parts out of its spool file,
  # which keeps its size.
  local max=0 s
  echo 0 >"$2"
  while :; do
    s=$(find "$1" -type f -printf '%b\n' 2>/dev/null | awk '{t += $1 * 512} END {printf "%d", t}') || s=0
    if [ "${s:-0}" -gt "$max" ]; then max=$s; echo "$max" >"$2"; fi
    sleep 0.1
  done
}

own_usage() { # $1 backhaul's stderr (text log): its `resources` line as JSON, or null
  local line
  line=$(grep -m1 ' resources ' "$1" 2>/dev/null) || { echo null; return; }
  awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] ~ /^(user_s|sys_s|minor_faults|raw_bytes)$/) v[kv[1]] = kv[2] } }
       END { printf "{\"user_s\":%s,\"sys_s\":%s,\"minor_faults\":%s,\"raw_bytes\":%s}", v["user_s"], v["sys_s"], v["minor_faults"], v["raw_bytes"] }' <<<"$line"
}

busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
busy_cores() { # $1 $2 busy and idle ticks before, $3 $4 after: how many of the machine's CPUs were busy
  awk -v b=$(($3 - $1)) -v i=$(($4 - $2)) -v n="$(nproc)" 'BEGIN { printf "%.2f", (b + i) ? n * b / (b + i) : 0 }'
}

tfield() { # $1 time -v output, $2 label
  awk -F': ' -v k="$2" 'index($0, k) { v = $NF } END { print (v == "" ? 0 : v) }' "$1"
}

run_case() { # $1 size, $2 case, $3 rep
  local size=$1 name=$2 rep=$3 d="$WORK/run" rc t0 t1 disk obj="null" key
  rm -rf "$d"; mkdir -p "$d/tmp"
  local -a cmd
  case "$name" in
    floor)    cmd=(bash -c 'exec "$0" -Fc -Z0 -d "$1" >/dev/null' "$PG_DUMP" "$DB") ;;
    script)   cmd=(bash -c 'set -e; "$0" -F c -d "$1" -f "$2"; "$3" "$4" upload-file "$5" "bench/script/$1.dump" "$2"' \
                   "$PG_DUMP" "$DB" "$d/tmp/$DB.dump" "$PY" "$S3UTIL" "$BUCKET") ;;
    pipeline) cmd=(bash -c 'set -o pipefail; "$0" -Fc -Z0 -d "$1" | zstd -3 -T2 -q -c | "$2" "$3" upload-stdin "$4" "bench/pipeline/$1.dump.zst"' \
                   "$PG_DUMP" "$DB" "$PY" "$S3UTIL" "$BUCKET") ;;
    bh_zstd)  cmd=(env PG_COMPRESSION=zstd PG_DB_NAME="$DB" "$BIN" backup) ;;
    bh_zstd_st) cmd=(env PG_COMPRESSION=zstd PG_ZSTD_THREADS=1 PG_DB_NAME="$DB" "$BIN" backup) ;;
    bh_zstd_alt) cmd=(env PG_COMPRESSION=zstd PG_DB_NAME="$DB" "$ALT_BIN" backup) ;;
    bh_pg)    cmd=(env PG_COMPRESSION=pg PG_DB_NAME="$DB" "$BIN" backup) ;;
    bh_none)  cmd=(env PG_COMPRESSION=none PG_DB_NAME="$DB" "$BIN" backup) ;;
    floor_par) cmd=("$PG_DUMP" -Fd -j "$BJOBS" -Z0 --no-sync -d "$DB" -f "$d/tmp/par") ;;
    bh_jobs)  cmd=(env PG_COMPRESSION=zstd PG_JOBS="$BJOBS" PG_DB_NAME="$DB" "$BIN" backup) ;;
    # The lower bound of backhaul's own cost in --jobs: no compression, only hashing and copying.
    bh_jobs_none) cmd=(env PG_COMPRESSION=none PG_JOBS="$BJOBS" PG_DB_NAME="$DB" "$BIN" backup) ;;
  esac
  sample_disk "$d/tmp" "$d/disk" & SAMPLER_PID=$!
  local b0 i0 b1 i1
  read -r b0 i0 < <(busy_ticks)
  t0=$(date +%s.%N)
  set +e
  TMPDIR="$d/tmp" BACKUP_WORK_DIR="$d/tmp" /usr/bin/time -v -o "$d/time" "${cmd[@]}" >"$d/stdout" 2>"$d/stderr"
  rc=$?
  set -e
  t1=$(date +%s.%N)
  read -r b1 i1 < <(busy_ticks)
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  disk=$(cat "$d/disk")
  if [ "$name" = script ] && [ -f "$d/tmp/$DB.dump" ]; then
    local fsz; fsz=$(stat -c %s "$d/tmp/$DB.dump")
    [ "$fsz" -gt "$disk" ] && disk=$fsz
  fi
  if [ "$name" != floor ] && [ "$name" != floor_par ] && [ "$rc" -eq 0 ]; then
    obj=$(object_bytes)
  fi
  clear_store
  local wall user sys rss
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  user=$(tfield "$d/time" "User time (seconds)")
  sys=$(tfield "$d/time" "System time (seconds)")
  rss=$(tfield "$d/time" "Maximum resident set size (kbytes)")
  # backhaul's own CPU (getrusage RUSAGE_SELF, without pg_dump): its `resources` log line.
  local own="null"
  if [ "$rc" -eq 0 ] && [[ "$name" == bh_* ]]; then own=$(own_usage "$d/stderr"); fi
  if [ "$rc" -ne 0 ]; then
    FAILED=$((FAILED + 1))
    echo "bench: run $name (rep $rep, ~$size MB) FAILED with exit $rc; last lines of its stderr:" >&2
    tail -15 "$d/stderr" | sed 's/^/    /' >&2
  fi
  printf '{"size_mb":%s,"dataset":"%s","case":"%s","rep":%s,"exit":%s,"wall_s":%s,"user_s":%s,"sys_s":%s,"maxrss_kb":%s,"disk_bytes":%s,"object_bytes":%s,"own":%s,"busy_cores":%s}\n' \
    "$size" "$DATASET" "$name" "$rep" "$rc" "$wall" "$user" "$sys" "$rss" "$disk" "$obj" "$own" "$(busy_cores "$b0" "$i0" "$b1" "$i1")" >>"$RAW"
  printf '   %-9s rep %s: %7ss wall, %6.2fs cpu, %6.1f MiB rss, disk %s B, object %s B%s%s\n' "$name" "$rep" "$wall" \
    "$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')" "$(awk -v r="$rss" 'BEGIN{print r/1024}')" "$disk" "${obj/null/-}" \
    "$([ "$own" != null ] && echo ", backhaul's own $own")" "$([ "$rc" -ne 0 ] && echo " (FAILED)")" >&2
  rm -rf "$d"
}

# Restore cases: the same archive (pg_dump -Fc -Z0 of the database) as a local file, as a
# backhaul artifact (zstd) and as a plain object for the download case; each run restores into
# a freshly created empty database.
prepare_restore() {
  "$PG_DUMP" -Fc -Z0 -d "$DB" -f "$WORK/restore-src.dump"
  env PG_COMPRESSION=zstd PG_DB_NAME="$DB" BACKUP_GLOBALS=off "$BIN" backup >"$WORK/restore-bk.json" 2>"$WORK/restore-bk.log" \
    || { tail -15 "$WORK/restore-bk.log" >&2; die "backup for the restore cases failed"; }
  RKEY=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["key"])' "$WORK/restore-bk.json")
  if selected r_download; then
    "$PY" "$S3UTIL" upload-file "$BUCKET" "bench/restore/$DB.dump" "$WORK/restore-src.dump"
  fi
  # backup --jobs: a local directory dump and a PG_JOBS backup (a directory dump in the store).
  if selected r_local_dir_jobs; then
    "$PG_DUMP" -Fd -j "$BJOBS" -Z0 --no-sync -d "$DB" -f "$WORK/restore-src.dir"
  fi
  if selected r_bh_dir_jobs; then
    env PG_COMPRESSION=zstd PG_JOBS="$BJOBS" PG_DB_NAME="$DB" BACKUP_GLOBALS=off BACKUP_WORK_DIR="$WORK" "$BIN" backup \
      >"$WORK/restore-bkdir.json" 2>"$WORK/restore-bkdir.log" \
      || { tail -15 "$WORK/restore-bkdir.log" >&2; die "backup --jobs for the restore cases failed"; }
    RKEY_DIR=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["key"])' "$WORK/restore-bkdir.json")
  fi
}

# After the last r_bh_dir_jobs run: is the restored database's plain pg_dump the source's?
check_dir_restore() { # $1 size
  local a b equal=false
  # Sorted lines: the order rows come back in (heap order) is not the content.
  "$PG_DUMP" -Fp -d "$DB" | grep -v -e '^\\restrict ' -e '^\\unrestrict ' | LC_ALL=C sort -S 256M -T "$WORK" >"$WORK/plain-src.sql"
  "$PG_DUMP" -Fp -d bench_restore | grep -v -e '^\\restrict ' -e '^\\unrestrict ' | LC_ALL=C sort -S 256M -T "$WORK" >"$WORK/plain-restored.sql"
  a=$(sha256sum <"$WORK/plain-src.sql" | cut -d' ' -f1); b=$(sha256sum <"$WORK/plain-restored.sql" | cut -d' ' -f1)
  [ "$a" = "$b" ] && equal=true
  say "restore of the --jobs backup: plain pg_dump of source $a, of restored $b: $([ "$equal" = true ] && echo EQUAL || echo DIFFERENT)"
  [ "$equal" = true ] || diff "$WORK/plain-src.sql" "$WORK/plain-restored.sql" | head -20 | cut -c1-200 >&2 || true
  rm -f "$WORK/plain-src.sql" "$WORK/plain-restored.sql"
  printf '{"size_mb":%s,"dataset":"%s","case":"check_dir_restore","rep":0,"exit":0,"wall_s":0,"user_s":0,"sys_s":0,"maxrss_kb":0,"disk_bytes":0,"object_bytes":null,"equal":%s}\n' \
    "$1" "$DATASET" "$equal" >>"$RAW"
}

run_restore_case() { # $1 size, $2 case, $3 rep
  local size=$1 name=$2 rep=$3 d="$WORK/run" rc t0 t1 disk
  rm -rf "$d"; mkdir -p "$d/tmp"
  psql_su -c "drop database if exists bench_restore" -c "create database bench_restore owner bench" >/dev/null
  # Settle: the previous restore's ~2x its size in dirty heap and WAL is written out now, not
  # during this case (a checkpoint or the kernel's writeback landing mid-run moved single
  # runs by 20-30 %).
  psql_su -c "checkpoint" >/dev/null; sync
  local to="postgresql://bench:bench@127.0.0.1:$PGPORT/bench_restore"
  local -a cmd
  case "$name" in
    r_local_1tx)  cmd=("$PGBIN/pg_restore" --exit-on-error --single-transaction -d bench_restore "$WORK/restore-src.dump") ;;
    r_local_jobs) cmd=("$PGBIN/pg_restore" --exit-on-error -j "$RJOBS" -d bench_restore "$WORK/restore-src.dump") ;;
    r_download)   cmd=(bash -c 'set -e; "$0" "$1" download "$2" "$3" "$4"; "$5" --exit-on-error --single-transaction -d bench_restore "$4"' \
                     "$PY" "$S3UTIL" "$BUCKET" "bench/restore/$DB.dump" "$d/tmp/$DB.dump" "$PGBIN/pg_restore") ;;
    r_bh_stream)  cmd=("$BIN" restore "$RKEY" --to "$to") ;;
    r_bh_jobs)    cmd=("$BIN" restore "$RKEY" --jobs "$RJOBS" --to "$to") ;;
    r_local_dir_jobs) cmd=("$PGBIN/pg_restore" --exit-on-error -j "$BJOBS" -d bench_restore "$WORK/restore-src.dir") ;;
    r_bh_dir_jobs) cmd=("$BIN" restore "$RKEY_DIR" --jobs "$BJOBS" --to "$to") ;;
  esac
  sample_disk "$d/tmp" "$d/disk" & SAMPLER_PID=$!
  local b0 i0 b1 i1
  read -r b0 i0 < <(busy_ticks)
  t0=$(date +%s.%N)
  set +e
  TMPDIR="$d/tmp" /usr/bin/time -v -o "$d/time" "${cmd[@]}" >"$d/stdout" 2>"$d/stderr"
  rc=$?
  set -e
  t1=$(date +%s.%N)
  read -r b1 i1 < <(busy_ticks)
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  disk=$(cat "$d/disk")
  local wall user sys rss
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  user=$(tfield "$d/time" "User time (seconds)")
  sys=$(tfield "$d/time" "System time (seconds)")
  rss=$(tfield "$d/time" "Maximum resident set size (kbytes)")
  if [ "$rc" -ne 0 ]; then
    FAILED=$((FAILED + 1))
    echo "bench: run $name (rep $rep, ~$size MB) FAILED with exit $rc; last lines of its stderr:" >&2
    tail -15 "$d/stderr" | sed 's/^/    /' >&2
  fi
  printf '{"size_mb":%s,"dataset":"%s","case":"%s","rep":%s,"exit":%s,"wall_s":%s,"user_s":%s,"sys_s":%s,"maxrss_kb":%s,"disk_bytes":%s,"object_bytes":null,"busy_cores":%s}\n' \
    "$size" "$DATASET" "$name" "$rep" "$rc" "$wall" "$user" "$sys" "$rss" "$disk" "$(busy_cores "$b0" "$i0" "$b1" "$i1")" >>"$RAW"
  printf '   %-12s rep %s: %7ss wall, %6.2fs cpu, %6.1f MiB rss, disk %s B%s\n' "$name" "$rep" "$wall" \
    "$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')" "$(awk -v r="$rss" 'BEGIN{print r/1024}')" "$disk" \
    "$([ "$rc" -ne 0 ] && echo " (FAILED)")" >&2
  rm -rf "$d"
  if [ "$name" = r_bh_dir_jobs ] && [ "$rep" = "$REPEAT" ] && [ "$rc" -eq 0 ]; then check_dir_restore "$size"; fi
}

for DATASET in $DATASETS; do
for size in $SIZES; do
  make_db "$size" "$DATASET"
  printf '{"requested_mb":%s,"dataset":"%s","db":"%s","db_bytes":%s,"rows":%s}\n' "$size" "$DATASET" "$DB" "$DB_BYTES" "$ROWS" >>"$SIZES_JSON"
  say "warm-up: one untimed pg_dump"
  "$PG_DUMP" -Fc -Z0 -d "$DB" >/dev/null
  if [ "$BACKUP" = 1 ]; then
    for rep in $(seq "$REPEAT"); do
      say "~$size MB ($DATASET), repetition $rep/$REPEAT (cases interleaved; uploads go to $S3_DESC)"
      for c in "${CASES[@]}" "${EXTRA_CASES[@]}"; do if selected "$c"; then run_case "$size" "$c" "$rep"; fi; done
    done
  fi
  if [ "$RESTORE" = 1 ]; then
    say "restore cases: preparing the archive (local file, backhaul artifact, plain object)"
    prepare_restore
    for rep in $(seq "$REPEAT"); do
      say "~$size MB ($DATASET), restore repetition $rep/$REPEAT (jobs=$RJOBS; cases interleaved)"
      for c in "${RESTORE_CASES[@]}"; do if selected "$c"; then run_restore_case "$size" "$c" "$rep"; fi; done
    done
    psql_su -c "drop database if exists bench_restore" >/dev/null
    clear_store
    rm -f "$WORK/restore-src.dump"
    rm -rf "$WORK/restore-src.dir"
  fi
  psql_su -c "drop database $DB" >/dev/null
done
done

# Machine and tool info, then the report.
"$PY" - "$WORK/meta.json" <<EOF
import json, os, sys
def first(path, prefix):
    for line in open(path):
        if line.startswith(prefix):
            return line.split(":", 1)[1].strip()
    return "unknown"
meta = {
  "stamp": "$STAMP",
  "s3_server": """$S3_DESC""",
  "s3_server_short": "$S3_SHORT",
  "machine": {
    "nproc": os.cpu_count(),
    "cpu_model": first("/proc/cpuinfo", "model name"),
    "mem_total_mib": int(first("/proc/meminfo", "MemTotal").split()[0]) // 1024,
    "kernel": os.uname().release,
    "postgres": """$(psql_su -At -c 'select version()')""",
    "pg_dump": """$("$PG_DUMP" --version)""",
    "zstd": """$(zstd --version | grep -o 'v[0-9][0-9.]*' | head -1)""",
    "backhaul_bin": """$BIN""",
    "backhaul_version": """$("$BIN" --version 2>/dev/null | head -1 || echo unknown)""",
    "alt_bin": """$ALT_BIN""",
  },
  "settings": {"sizes_mb": "$SIZES".split(), "datasets": "$DATASETS".split(), "cases": "$SELECTED".split(), "repeat": $REPEAT, "s3": "$S3KIND", "restore": "$RESTORE" == "1", "backup": "$BACKUP" == "1", "restore_jobs": $RJOBS, "backup_jobs": $BJOBS},
  "sizes": [json.loads(l) for l in open("$SIZES_JSON") if l.strip()],
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
echo >&2
"$PY" "$ROOT/bench/report.py" "$RAW" "$WORK/meta.json" "$OUT/$STAMP.json" "$OUT/$STAMP.md"
# Keep the raw per-run numbers in the JSON too.
"$PY" - "$OUT/$STAMP.json" "$RAW" <<'EOF'
import json, sys
out = json.load(open(sys.argv[1]))
out["runs"] = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
json.dump(out, open(sys.argv[1], "w"), indent=2)
EOF
say "results: $OUT/$STAMP.md and $OUT/$STAMP.json"
if [ "$FAILED" -gt 0 ]; then
  echo "bench: $FAILED run(s) failed; their figures are left out (see the messages above)" >&2
  exit 1
fi
