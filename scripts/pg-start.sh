#!/usr/bin/env bash
# Start the local PostgreSQL cluster (Debian packaging) and give the current user a superuser
# role reached over the Unix socket with peer authentication: no password anywhere.
set -euo pipefail
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
    pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | awk '$1=="'"$version"'" && $2=="main" {print $4}' | grep -q online; then
    pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 30); do
    pg_isready -q -h /var/run/postgresql && break
    sleep 1
done
user=$(id -un)
if [ "$user" != postgres ]; then
    runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='$user'" | grep -q 1 \
        || runuser -u postgres -- psql -qc "CREATE ROLE \"$user\" LOGIN SUPERUSER"
fi
echo "postgresql $version running on /var/run/postgresql"
