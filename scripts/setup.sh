#!/usr/bin/env bash
# Install what device-ca needs on Debian, skipping what is already there (idempotent).
#   Debian: softhsm2 opensc postgresql openssl gnutls-bin curl, and for the browser tests
#           chromium chromium-driver libnss3-tools (pk12util, certutil); for the HSM matrix
#           opencryptoki and a TPM: swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0
#           libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-openssl dbus
#   Python: this package with its test extras (pip install -e '.[test]')
#   Tools:  nginx-light, wrk, estclient (scripts/install-tools.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

packages=(softhsm2 opensc postgresql openssl gnutls-bin curl chromium chromium-driver libnss3-tools
          opencryptoki swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1
          libtpm2-pkcs11-tools tpm2-openssl dbus)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# nginx-light, wrk and the Go estclient for the integration tests and benchmarks.
scripts/install-tools.sh

PYTHON=${PYTHON:-python3}
# Install (editable) unless this very checkout is already what Python imports with all dependencies.
here=$(pwd -P)
if ! (cd / && "$PYTHON" - "$here" <<'PY' 2>/dev/null
import sys, pathlib
import device_ca, hsm, pkcs11, pkilint, sqlmodel, psycopg, pytest, alembic, atheris, selenium, openapi_core, openapi_spec_validator
assert pathlib.Path(device_ca.__file__).resolve().is_relative_to(sys.argv[1])
PY
); then
    echo "setup: installing the device-ca Python package and its dependencies"
    "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
fi
