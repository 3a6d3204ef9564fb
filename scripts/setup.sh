#!/usr/bin/env bash
# Install what device-ca needs on Debian, skipping what is already there (idempotent).
#   Debian: softhsm2 opensc postgresql openssl gnutls-bin curl
#   Python: this package with its test extras (pip install -e '.[test]')
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

packages=(softhsm2 opensc postgresql openssl gnutls-bin curl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import device_ca, pkcs11, pkilint, sqlmodel, psycopg, pytest" 2>/dev/null \
   || [ pyproject.toml -nt "$(ls -d ./*.egg-info 2>/dev/null | head -1 || echo pyproject.toml)" ]; then
    echo "setup: installing the device-ca Python package and its dependencies"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
fi
