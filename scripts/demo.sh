#!/usr/bin/env bash
# The main job, end to end: a CA whose keys live on a SoftHSM token, a door lock's certificate
# issued from an openssl CSR and checked by openssl and pkilint, then revoked, and the audit
# log verified. Safe to run again: it reuses the CA under var/demo and enrolls a new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export SOFTHSM2_CONF=$PWD/softhsm.conf
export DEVICE_CA_HOME=$PWD/var/demo
export DEVICE_CA_HSM_PIN_FILE=$PWD/var/hsm-pin
export DEVICE_CA_POLICY_DIR=$PWD/policies
unset DEVICE_CA_HSM_PIN DEVICE_CA_DATABASE_URL
scripts/hsm-init.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "CA on the SoftHSM token"
if ! device-ca ca show >/dev/null 2>&1; then
    device-ca init --organization BuildingCo
fi
device-ca ca show

step "A door lock makes a key and a CSR with openssl"
dev=lock-$((RANDOM % 9000 + 1000))
out=$DEVICE_CA_HOME/devices
mkdir -p "$out"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/$dev.key" \
    -subj "/O=BuildingCo/OU=door-lock/CN=$dev" -out "$out/$dev.csr" 2>/dev/null
echo "$out/$dev.csr"

step "device-ca issues it under policy door-lock (CSR check, policy, pkilint, HSM signature)"
device-ca issue --policy door-lock --csr "$out/$dev.csr" --out "$out/$dev.pem" 2> "$out/$dev.log"
cat "$out/$dev.log"
serial=$(sed -n 's/^issued serial \([0-9a-f]*\).*/\1/p' "$out/$dev.log")
openssl x509 -in "$out/$dev.pem" -noout -subject -issuer -dates -ext basicConstraints,extendedKeyUsage,subjectAltName

step "Independent checks: openssl verify and pkilint"
openssl verify -CAfile "$DEVICE_CA_HOME/ca/root.pem" -untrusted "$DEVICE_CA_HOME/ca/issuing.pem" "$out/$dev.pem"
lint_pkix_signer_signee_cert_chain lint -s WARNING "$DEVICE_CA_HOME/ca/issuing.pem" "$out/$dev.pem" && echo "pkilint chain: no findings"

step "Revoke it (key compromise) and look at the fleet"
device-ca revoke "$serial" --reason keyCompromise
device-ca list

step "Audit log"
device-ca audit verify
