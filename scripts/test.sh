#!/usr/bin/env bash
# The whole test suite: installs what is missing (Keycloak too), starts PostgreSQL, then runs pytest twice,
# once with the database on SQLite (every test) and once on PostgreSQL (every test that uses
# the database). Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
# PostgreSQL: started for the run and stopped again after it, unless it was running before.
if ! pg_isready -q -h /var/run/postgresql 2>/dev/null; then
    trap 'pg_ctlcluster "$(ls /usr/lib/postgresql | sort -V | tail -1)" main stop >/dev/null 2>&1 || true' EXIT
fi
scripts/pg-start.sh || exit 1
# Keycloak 26.7.3 from Maven Central (cached); the tests marked keycloak start and stop their own instance.
scripts/keycloak.sh install || exit 1

status=0
echo "== device-ca tests, database: SQLite"
DEVICE_CA_TEST_DATABASE=sqlite python3 -m pytest "$@" || status=$?
echo "== device-ca tests, database: PostgreSQL"
DEVICE_CA_TEST_DATABASE=postgresql python3 -m pytest -m database "$@" || status=$?
exit $status
