#!/usr/bin/env bash
# The main job, end to end: a CA whose keys live on a SoftHSM token, `device-ca serve`, a badge
# reader enrolled over EST with a one-time bootstrap token (curl + openssl) and renewed with its
# certificate, its status over OCSP, a door lock issued and revoked from the CLI (OCSP answers
# revoked at once), and the audit log verified.
# Safe to run again: it reuses the CA under var/demo and enrolls new devices.
# Ports: DEMO_HTTPS_PORT (8443) and DEMO_HTTP_PORT (8080).
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

step "device-ca serve: EST on https://127.0.0.1:8443, CA files and health on http://127.0.0.1:8080"
log=$DEVICE_CA_HOME/serve.log
device-ca serve --port "${DEMO_HTTPS_PORT:-8443}" --http-port "${DEMO_HTTP_PORT:-8080}" > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
est=https://127.0.0.1:${DEMO_HTTPS_PORT:-8443}/.well-known/est
for _ in $(seq 1 60); do
    curl -sf -o /dev/null "http://127.0.0.1:${DEMO_HTTP_PORT:-8080}/healthz" && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
done
curl -s "http://127.0.0.1:${DEMO_HTTP_PORT:-8080}/healthz"; echo
chain=$DEVICE_CA_HOME/ca/chain.pem

step "The operator hands a badge reader a one-time bootstrap token"
dev=br-$((RANDOM % 9000 + 1000))
out=$DEVICE_CA_HOME/devices
mkdir -p "$out"
secret=$(device-ca token create --policy badge-reader --device-id "$dev" --ttl 1h)
echo "device $dev, token ${secret:0:6}... (shown once, stored only as a hash)"

step "The device makes its key and CSR (openssl) and enrolls over EST (curl, HTTP Basic with the token)"
san="URI:urn:dev:org:32473-$dev"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/$dev.key" \
    -subj "/O=BuildingCo/OU=badge-reader/CN=$dev" -addext "subjectAltName=$san" -outform DER -out "$out/$dev.csr" 2>/dev/null
base64 "$out/$dev.csr" > "$out/$dev.b64"
curl -sf --cacert "$chain" -u "$dev:$secret" -H 'Content-Type: application/pkcs10' --data-binary @"$out/$dev.b64" \
    "$est/badge-reader/simpleenroll" | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -out "$out/$dev.pem"
openssl x509 -in "$out/$dev.pem" -noout -subject -serial -enddate
openssl verify -CAfile "$DEVICE_CA_HOME/ca/root.pem" -untrusted "$DEVICE_CA_HOME/ca/issuing.pem" "$out/$dev.pem"
echo "the same token again:"
curl -s --cacert "$chain" -u "$dev:$secret" -H 'Content-Type: application/pkcs10' --data-binary @"$out/$dev.b64" \
    -w "HTTP %{http_code}\n" "$est/badge-reader/simpleenroll"

step "A relying party (broker, gateway, Keycloak) asks the OCSP responder about it"
ocsp_url=http://127.0.0.1:${DEMO_HTTP_PORT:-8080}/ocsp
openssl ocsp -issuer "$DEVICE_CA_HOME/ca/issuing.pem" -cert "$out/$dev.pem" -url "$ocsp_url" \
    -CAfile "$DEVICE_CA_HOME/ca/root.pem" 2>&1 | grep -E "verify|: "

step "The device renews over EST with its current certificate as TLS client certificate (same key)"
curl -sf --cacert "$chain" --cert "$out/$dev.pem" --key "$out/$dev.key" -H 'Content-Type: application/pkcs10' \
    --data-binary @"$out/$dev.b64" "$est/badge-reader/simplereenroll" \
    | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -out "$out/$dev-renewed.pem"
openssl x509 -in "$out/$dev-renewed.pem" -noout -subject -serial -enddate
lint_pkix_signer_signee_cert_chain lint -s WARNING "$DEVICE_CA_HOME/ca/issuing.pem" "$out/$dev-renewed.pem" \
    && echo "pkilint chain: no findings"
device-ca list --device-id "$dev"
echo "(the first certificate is revoked as superseded once the policy's rotation grace is over)"

step "An operator issues a door lock's certificate from the command line, revokes it; OCSP says so at once"
lock=lock-$((RANDOM % 9000 + 1000))
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/$lock.key" \
    -subj "/O=BuildingCo/OU=door-lock/CN=$lock" -out "$out/$lock.csr" 2>/dev/null
device-ca issue --policy door-lock --csr "$out/$lock.csr" --out "$out/$lock.pem" 2> "$out/$lock.log"
cat "$out/$lock.log"
serial=$(sed -n 's/^issued serial \([0-9a-f]*\).*/\1/p' "$out/$lock.log")
device-ca revoke "$serial" --reason keyCompromise
openssl ocsp -issuer "$DEVICE_CA_HOME/ca/issuing.pem" -cert "$out/$lock.pem" -url "$ocsp_url" \
    -CAfile "$DEVICE_CA_HOME/ca/root.pem" 2>&1 | grep -E "verify|: |Reason"

step "Audit log: the head signed on the token, then every hash, checkpoint and certificate checked"
device-ca audit checkpoint > /dev/null          # the server also signs one every 30 s with new events
curl -s "${ocsp_url%/ocsp}/audit/checkpoint" | python3 -c 'import json, sys; c = json.load(sys.stdin)
print("checkpoint served at /audit/checkpoint: event", c["seq"], "head", c["head"][:16] + "...", "at", c["at"])'
device-ca audit verify
