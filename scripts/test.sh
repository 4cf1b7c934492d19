#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against a real PostgreSQL cluster,
# moto_server and the stand-in MongoDB tools. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bash tests/standins/selfcheck.sh >/dev/null
echo "stand-in mongo tools: self-check passed" >&2
# The AWS contract checker's own test (botocore-serialized good and bad requests, moto + proxy).
"${BACKHAUL_VENV:-/opt/backhaul-venv}/bin/python" tests/contract/selfcheck.py
# Two test threads: each integration test runs its own PostgreSQL cluster.
cargo test --locked -- --test-threads="${BACKHAUL_TEST_THREADS:-3}"
