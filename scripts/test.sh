#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against a real PostgreSQL cluster,
# moto_server, the real MongoDB tools (../shared/mongo-tools) with the suite's test server, and
# the stand-in mongodump (a tool that dies on cue). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bash tests/standins/selfcheck.sh >/dev/null
echo "stand-in mongodump: self-check passed" >&2
"${BACKHAUL_VENV:-/opt/backhaul-venv}/bin/python" tests/mongod/selfcheck.py >/dev/null
echo "test mongod with the real mongo tools: self-check passed" >&2
# The AWS contract checker's own test (botocore-serialized good and bad requests, moto + proxy).
"${BACKHAUL_VENV:-/opt/backhaul-venv}/bin/python" tests/contract/selfcheck.py
# Three test threads by default (BACKHAUL_TEST_THREADS): each integration test runs its own
# PostgreSQL cluster, and more would only contend for the 2 cores.
cargo test --locked -- --test-threads="${BACKHAUL_TEST_THREADS:-3}"
