#!/usr/bin/env bash
# Keycloak with device-ca, end to end, after the main demo: Keycloak started and its realm set up by
# `device-ca keycloak init-realm`, a door lock enrolled over EST, a certificate-bound token for it,
# and a relying party (examples/relying_party.py) that checks the token against the realm's keys and
# the binding to the client certificate: 200 for the lock, 401 for the same token with another
# device's certificate, 401 once the lock is revoked (introspection). Stops everything it started.
# Ports: DEMO_HTTPS_PORT (8443), DEMO_HTTP_PORT (8080), DEMO_RP_PORT (9443), KEYCLOAK_*_PORT (18080...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/demo.sh > /dev/null                 # the CA on SoftHSM, a badge reader enrolled (var/demo)

export SOFTHSM2_CONF=$PWD/softhsm.conf DEVICE_CA_HOME=$PWD/var/demo DEVICE_CA_HSM_PIN_FILE=$PWD/var/hsm-pin \
    DEVICE_CA_POLICY_DIR=$PWD/policies
unset DEVICE_CA_HSM_PIN DEVICE_CA_DATABASE_URL
export KEYCLOAK_STATE=${KEYCLOAK_STATE:-$PWD/var/demo/keycloak}
kc_http=http://127.0.0.1:${KEYCLOAK_HTTP_PORT:-18080}
kc_https=https://127.0.0.1:${KEYCLOAK_HTTPS_PORT:-18443}
https_port=${DEMO_HTTPS_PORT:-8443} http_port=${DEMO_HTTP_PORT:-8080} rp_port=${DEMO_RP_PORT:-9443}
out=$DEVICE_CA_HOME/devices
mkdir -p "$out"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
drained() {  # wait (up to 30 s) until device-ca serve has applied every pending Keycloak change
    for _ in $(seq 1 60); do
        [ "$(device-ca keycloak status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])')" = 0 ] \
            && return 0
        sleep 0.5
    done
}

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    scripts/keycloak.sh stop > /dev/null || true
}
trap cleanup EXIT

step "Keycloak 26.7.3 trusting the device CA; the realm set up by device-ca"
export KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=$(openssl rand -hex 16)
KEYCLOAK_FRESH=1 KEYCLOAK_TRUSTSTORE=$DEVICE_CA_HOME/ca/chain.pem scripts/keycloak.sh start
export DEVICE_CA_KEYCLOAK_URL=$kc_http DEVICE_CA_KEYCLOAK_USERNAME=admin
export DEVICE_CA_KEYCLOAK_PASSWORD=$KC_BOOTSTRAP_ADMIN_PASSWORD
device-ca keycloak init-realm

step "device-ca serve: EST, OCSP, and the Keycloak outbox drained every second"
device-ca serve --port "$https_port" --http-port "$http_port" > "$DEVICE_CA_HOME/serve-keycloak.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
    curl -sf -o /dev/null "http://127.0.0.1:$http_port/healthz" && break
    sleep 0.5
done

step "The building API's client in Keycloak (it introspects device tokens)"
secret_file=$out/building-api.secret
python3 - "$secret_file" <<'PY'
import os, sys
from device_ca.config import Settings
from device_ca.keycloak import admin_client
secret = admin_client(Settings.load().keycloak).resource_server("smart-building", "building-api")
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, secret.encode())
os.close(fd)
print("client building-api ready; its secret is in", sys.argv[1])
PY

step "A door lock enrolls over EST with a bootstrap token; its Keycloak client follows"
lock=door-lock-floor-1-room-$((RANDOM % 900 + 100))
chain=$DEVICE_CA_HOME/ca/chain.pem
secret=$(device-ca token create --policy door-lock --device-id "$lock" --ttl 1h)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/$lock.key" \
    -subj "/O=BuildingCo/OU=door-lock/CN=$lock" -outform DER -out "$out/$lock.csr" 2>/dev/null
base64 "$out/$lock.csr" | curl -sf --cacert "$chain" -u "$lock:$secret" -H 'Content-Type: application/pkcs10' \
    --data-binary @- "https://127.0.0.1:$https_port/.well-known/est/door-lock/simpleenroll" \
    | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -out "$out/$lock.pem"
openssl x509 -in "$out/$lock.pem" -noout -subject -serial
drained
device-ca keycloak status | head -4

step "The lock gets a token with its certificate alone (client-x509, bound to the certificate)"
token=$(curl -sf --cert "$out/$lock.pem" --key "$out/$lock.key" --cacert "$KEYCLOAK_STATE/tls/server.pem" \
    -d grant_type=client_credentials -d client_id="$lock" \
    "$kc_https/realms/smart-building/protocol/openid-connect/token" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
python3 -c 'import base64,json,sys; t=sys.argv[1].split(".")[1]; c=json.loads(base64.urlsafe_b64decode(t+"="*(-len(t)%4)))
print({k: c[k] for k in ("azp", "device_id", "device_class", "cert_serial", "aud", "cnf")})' "$token"

step "A relying party checks signature, audience and the certificate binding (examples/relying_party.py)"
device-ca tls server-cert --host 127.0.0.1 --out-dir "$out/rp-tls" > /dev/null
python3 examples/relying_party.py --realm-url "$kc_https/realms/smart-building" \
    --realm-ca "$KEYCLOAK_STATE/tls/server.pem" --audience building-api --introspect-secret-file "$secret_file" \
    --cert "$out/rp-tls/server.pem" --key "$out/rp-tls/server.key" --client-cas "$chain" --port "$rp_port" \
    > "$DEVICE_CA_HOME/relying-party.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 40); do                    # until it listens (curl exit 7: connection refused)
    rc=0; curl -s -o /dev/null --cacert "$chain" "https://127.0.0.1:$rp_port/" 2>/dev/null || rc=$?
    [ "$rc" -ne 7 ] && break
    sleep 0.25
done
call() {  # certificate, key: the answer and HTTP status of GET /door/open with the lock's token, one line
    curl -s --cacert "$chain" --cert "$1" --key "$2" -H "Authorization: Bearer $token" \
        -w '\nHTTP %{http_code}' "https://127.0.0.1:$rp_port/door/open" | tr -s '\n' ' '
}
echo "the lock, its own certificate:         $(call "$out/$lock.pem" "$out/$lock.key")"
other=$(ls "$out"/br-*.pem | grep -v renewed | head -1 || true)
echo "the same token, a badge reader's cert:  $(call "$other" "${other%.pem}.key")"

step "The lock is revoked: Keycloak disables its client, introspection answers inactive at once"
serial=$(openssl x509 -in "$out/$lock.pem" -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f')
device-ca revoke "$serial" --reason keyCompromise
drained
echo "the lock, after revocation:             $(call "$out/$lock.pem" "$out/$lock.key")"
step "Stopping the relying party, device-ca serve and Keycloak"
