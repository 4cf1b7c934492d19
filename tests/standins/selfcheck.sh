#!/usr/bin/env bash
# Self-check for the stand-in mongodump (see README.md).
# Usage: tests/standins/selfcheck.sh   -- exits non-zero on the first failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HERE:$PATH"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
cd "$T"
unset BACKHAUL_STANDIN_MONGO_PASSWORD BACKHAUL_STANDIN_MONGO_USER BACKHAUL_STANDIN_ARGV_LOG \
      BACKHAUL_STANDIN_SLEEP BACKHAUL_STANDIN_FAIL BACKHAUL_STANDIN_FAIL_AFTER_BYTES
export BACKHAUL_STANDIN_MONGO_DATA="$T/srv"

n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
die() { echo "FAIL: $*" >&2; [ -f err ] && sed 's/^/    stderr: /' err >&2; exit 1; }
# expect_fail "<stderr substring>" cmd...   (exit status must be 1)
expect_fail() {
  local want="$1"; shift
  local rc=0; "$@" >out 2>err || rc=$?
  [ "$rc" = 1 ] || die "expected exit 1, got $rc: $*"
  grep -qF -- "$want" err || die "stderr lacks [$want]: $*"
  ok "fails as expected: $want"
}
same() { mongo_fixture.py --compare "$1" "$2" "${@:3}" || die "trees differ: $*"; }

# --- BSON encoder against bsonspec.org's examples, and decode/encode round trip
python3 - "$HERE" <<'EOF' || die "BSON encoder"
import sys, os, datetime
sys.path.insert(0, sys.argv[1])
import _standin as S
assert S.encode({"hello": "world"}) == b"\x16\x00\x00\x00\x02hello\x00\x06\x00\x00\x00world\x00\x00"
assert S.encode({"BSON": ["awesome", 5.05, 1986]}) == (
    b"\x31\x00\x00\x00\x04BSON\x00\x26\x00\x00\x00\x02\x30\x00\x08\x00\x00\x00awesome\x00"
    b"\x01\x31\x00\x33\x33\x33\x33\x33\x33\x14\x40\x10\x32\x00\xc2\x07\x00\x00\x00\x00")
d = {"_id": S.ObjectId("65a1b2c3d4e5f60718293a4b"), "i": 1, "l": S.Int64(1), "big": 2 ** 40,
     "f": 1.5, "t": True, "n": None, "s": "Zoë 🙂", "dt": datetime.datetime(2024, 1, 2, 3, 4, 5, 6000,
     tzinfo=datetime.timezone.utc), "sub": {"a": [1, "x"]}, "bin": S.Binary(b"\x00\xff", 0)}
raw = S.encode(d)
assert S.decode(raw) == d, S.decode(raw)
assert S.encode(S.decode(raw)) == raw
assert S.id_key(raw) == b"\x07" + bytes.fromhex("65a1b2c3d4e5f60718293a4b")
EOF
ok "BSON encoder matches bsonspec.org examples and round-trips"

# --- fixture: deterministic, documents decode and cover the BSON types
mongo_fixture.py --data srv --db shop --second-db inventory --large-mb 1 >summary.json
mongo_fixture.py --data srv-again --db shop --second-db inventory --large-mb 1 >/dev/null
same srv srv-again --exact
python3 - "$HERE" srv <<'EOF' || die "fixture content"
import sys, os, json
sys.path.insert(0, sys.argv[1])
import _standin as S
root, summary = sys.argv[2], json.load(open("summary.json"))
types = set()
for db, colls in summary.items():
    for coll, info in colls.items():
        docs = S.split_docs(open(os.path.join(root, db, coll + ".bson"), "rb").read())
        assert len(docs) == info["documents"], (coll, len(docs))
        for d in docs:
            assert S.encode(S.decode(d)) == d
            for t, _, _, _ in S.elements(d):
                types.add(t)
        meta = json.load(open(os.path.join(root, db, coll + ".metadata.json")))
        assert meta["collectionName"] == coll and len(meta["uuid"]) == 32
assert types >= {0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x08, 0x09, 0x0A, 0x10, 0x12}, types
assert summary["shop"]["empty"]["documents"] == 0
assert summary["shop"]["audit_log"]["bytes"] >= 1024 * 1024
EOF
ok "fixture is deterministic, well-formed and covers all BSON types"

printf 'uri: mongodb://localhost:27017/\n' >cfg.yaml
chmod 600 cfg.yaml

# --- directory mode: the real tool's layout, byte for byte
mongodump --config cfg.yaml --db shop --out dump1 2>err
grep -qF "done dumping shop.users (200 documents)" err || die "progress lines"
grep -qF "writing shop.events.2024 to dump1/shop/events.2024.bson" err || die "progress lines"
same srv/shop dump1/shop --exact
ok "directory dump is the server's tree"

# --- gzip directory mode, all databases
mongodump --config cfg.yaml --out dumpgz --gzip --quiet 2>err
[ ! -s err ] || die "--quiet still logged"
[ -f dumpgz/shop/users.bson.gz ] && [ -f dumpgz/inventory/items.metadata.json.gz ] || die "gzip layout"
ok "gzip directory dump of every database"

# --- archive mode: stdout + gzip, and file
mongodump --config=cfg.yaml --db=shop --archive --gzip >shop.archive.gz 2>err
gzip -t shop.archive.gz || die "archive not gzip"
mongodump --config cfg.yaml --archive=all.archive -v 2>err
tar -tf all.archive | grep -qx 'inventory/items.bson' || die "archive members"
ok "archive (stdout+gzip, file)"

# --- as the real mongodump: a missing database dumps nothing and exits 0
mongodump --config cfg.yaml --db nope --out dump-nope 2>err || die "missing database should exit 0"
[ ! -e dump-nope/nope ] || die "missing database wrote files"
ok "a missing database is an empty dump, exit 0"

# --- errors
expect_fail 'error parsing uri: scheme must be "mongodb" or "mongodb+srv"' mongodump --uri http://x --db shop
expect_fail "error parsing uri: must have at least 1 host" mongodump --uri mongodb:// --db shop
expect_fail "error parsing uri: unescaped @ sign in user info" mongodump --uri 'mongodb://u:p@ss@h/' --db shop
printf 'uri: mongodb://localhost:27017/admin\n' >cfg-admin.yaml; chmod 600 cfg-admin.yaml
expect_fail "Cannot specify different database in connection URI and command-line option" \
  mongodump --config cfg-admin.yaml --db shop
expect_fail "--oplog mode only supported on full dumps" mongodump --config cfg.yaml --db shop --oplog
expect_fail 'error parsing command line options: unknown option "bogus"' mongodump --bogus
expect_fail "expected argument for flag \`--db'" mongodump --config cfg.yaml --db
BACKHAUL_STANDIN_MONGO_DATA= expect_fail "BACKHAUL_STANDIN_MONGO_DATA is not set" mongodump --db shop
chmod 644 cfg.yaml
expect_fail "must be a 0600 file" mongodump --config cfg.yaml --db shop
chmod 600 cfg.yaml
expect_fail "no such file or directory" mongodump --config missing.yaml --db shop

# --- credentials: password from percent-encoded URI, quoting styles, password key
export BACKHAUL_STANDIN_MONGO_PASSWORD="p@ss:w/rd 'q\" #x"
expect_fail "(Unauthorized) command listDatabases requires authentication" mongodump --config cfg.yaml --db shop
printf 'uri: mongodb://app:s3cr3t-wrong@db1/\n' >cfg2.yaml; chmod 600 cfg2.yaml
expect_fail "(AuthenticationFailed) Authentication failed." mongodump --config cfg2.yaml --db shop
# As the real tools: the failed login's message shows the whole URI, password included.
grep -qF 'mongodb://app:s3cr3t-wrong@db1/' err || die "the real tools print the URI"
enc="$(python3 -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=""))' "$BACKHAUL_STANDIN_MONGO_PASSWORD")"
for line in "uri: mongodb://app:$enc@db1:27017,db2:27018/?replicaSet=rs0" \
            "uri: 'mongodb://app:$enc@db1/?authSource=admin'" \
            "uri: \"mongodb://app:$enc@db1/?authSource=admin\""; do
  printf '%s\n' "$line" >cfg2.yaml; chmod 600 cfg2.yaml
  mongodump --config cfg2.yaml --db shop --out dump3 --quiet 2>err || die "auth with: $line"
done
printf "uri: mongodb://app@db1/\npassword: 'p@ss:w/rd ''q\" #x'\n" >cfg2.yaml
mongodump --config cfg2.yaml --db shop --out dump3 --quiet 2>err || die "password: key"
printf "uri: mongodb://app@db1/\npassword: p@ss:w/rd 'q\" #x\n" >cfg2.yaml
expect_fail "Authentication failed." mongodump --config cfg2.yaml --db shop  # YAML ' #' starts a comment
printf "uri: mongodb://app@db1/\npassword: a: b\n" >cfg2.yaml
expect_fail "mapping values are not allowed" mongodump --config cfg2.yaml --db shop
unset BACKHAUL_STANDIN_MONGO_PASSWORD
ok "password checks (percent-encoding, YAML plain/single/double quotes, password: key)"

# --- hooks: argv log, FAIL, FAIL_AFTER_BYTES, SLEEP + SIGTERM
BACKHAUL_STANDIN_ARGV_LOG="$T/argv.log" mongodump --config cfg.yaml --db shop --out dump4 2>err
python3 - <<'EOF' || die "argv log"
import json
rec = json.loads(open("argv.log").read().splitlines()[-1])
assert rec["tool"] == "mongodump" and rec["argv"][:2] == ["--config", "cfg.yaml"], rec
assert rec["config_mode"] == "0600" and rec["config_existed"] is True, rec
EOF
ok "argv log records argv and config mode"
BACKHAUL_STANDIN_FAIL="Failed: boom" expect_fail "Failed: boom" mongodump --config cfg.yaml --db shop
BACKHAUL_STANDIN_FAIL_AFTER_BYTES=50000 expect_fail "connection reset" mongodump --config cfg.yaml --db shop --archive
[ "$(wc -c <out)" = 50000 ] || die "FAIL_AFTER_BYTES wrote $(wc -c <out) bytes"
start=$(date +%s)
BACKHAUL_STANDIN_SLEEP=30 mongodump --config cfg.yaml --db shop --archive >/dev/null 2>err &
pid=$!
sleep 1
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ "$rc" = 1 ] && [ $(( $(date +%s) - start )) -lt 10 ] || die "SIGTERM during SLEEP: rc=$rc"
grep -qF "signal 'terminated' received" err || die "signal message"
ok "SIGTERM during BACKHAUL_STANDIN_SLEEP stops promptly"

echo "selfcheck: all $n checks passed"
