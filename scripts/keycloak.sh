#!/usr/bin/env bash
# Keycloak 26.7.3 for development and the integration tests, on loopback only.
#
#   scripts/keycloak.sh install    fetch org.keycloak:keycloak-quarkus-dist with Maven (cached in the local
#                                  Maven repository) and unpack it into .cache/keycloak-<version>
#   scripts/keycloak.sh start      start `kc.sh start-dev` in the background and wait until /health/ready
#   scripts/keycloak.sh stop       stop the instance this script started
#   scripts/keycloak.sh restart    stop, then start (same data)
#   scripts/keycloak.sh status     exit 0 and print the URLs if it is running and ready, 1 otherwise
#
# Listeners (all 127.0.0.1): HTTP KEYCLOAK_HTTP_PORT (18080; admin API), HTTPS KEYCLOAK_HTTPS_PORT
# (18443; client certificates requested and verified against KEYCLOAK_TRUSTSTORE, the device CA chain),
# management KEYCLOAK_MANAGEMENT_PORT (19000; HTTPS /health/ready). The HTTPS server certificate is a
# throw-away self-signed one in $KEYCLOAK_STATE/tls/server.pem: clients trust that file.
#
# Environment:
#   KC_BOOTSTRAP_ADMIN_USERNAME / KC_BOOTSTRAP_ADMIN_PASSWORD   the admin created on the first start
#       against an empty database (required then; read by Keycloak from the environment, never printed)
#   KEYCLOAK_TRUSTSTORE   PEM file of the CA certificates devices chain to (copied into the state directory)
#   KEYCLOAK_FRESH=1      start from an empty database (the admin is created again)
#   KEYCLOAK_STATE        state directory: pid, log, TLS files, trust store, database (default .cache/keycloak-run);
#                         instances with their own state directory and ports run side by side
#   KEYCLOAK_HEAP         JVM heap options (default "-Xms128m -Xmx768m")
#   KEYCLOAK_JAVA_HOME    the JDK Keycloak runs on (default /usr/lib/jvm/temurin-25-jdk-amd64; Maven keeps its own)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

VERSION=${KEYCLOAK_VERSION:-26.7.3}
ARTIFACT="org.keycloak:keycloak-quarkus-dist:$VERSION:tar.gz"
KC_HOME=${KEYCLOAK_HOME:-$ROOT/.cache/keycloak-$VERSION}
STATE=${KEYCLOAK_STATE:-$ROOT/.cache/keycloak-run}
HTTP_PORT=${KEYCLOAK_HTTP_PORT:-18080}
HTTPS_PORT=${KEYCLOAK_HTTPS_PORT:-18443}
MANAGEMENT_PORT=${KEYCLOAK_MANAGEMENT_PORT:-19000}
READY_TIMEOUT=${KEYCLOAK_READY_TIMEOUT:-240}
KC_JAVA_HOME=${KEYCLOAK_JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}

die() { echo "keycloak: ERROR: $*" >&2; exit 1; }
say() { echo "keycloak: $*"; }

# The management interface inherits the HTTPS listener's certificate.
ready_url="https://127.0.0.1:$MANAGEMENT_PORT/health/ready"

is_ready() { curl -fsS -o /dev/null --max-time 3 --cacert "$STATE/tls/server.pem" "$ready_url" 2>/dev/null; }

running_pid() {
    local pid
    [ -s "$STATE/keycloak.pid" ] || return 1
    pid=$(cat "$STATE/keycloak.pid")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

install() {
    if [ -x "$KC_HOME/bin/kc.sh" ]; then
        say "Keycloak $VERSION already unpacked in $KC_HOME"
        return 0
    fi
    if ! command -v mvn >/dev/null; then
        say "installing Maven (Debian package maven)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends maven \
            || die "could not install maven"
    fi
    local download
    download=$(mktemp -d)
    # A RETURN trap outlives the function: reset it, or the next function's return trips set -u.
    trap 'rm -rf "$download"; trap - RETURN' RETURN
    say "fetching $ARTIFACT with Maven"
    mvn -q -B dependency:copy -Dartifact="$ARTIFACT" -DoutputDirectory="$download" -Dmdep.useBaseVersion=true \
        || die "mvn dependency:copy $ARTIFACT failed"
    local archive="$download/keycloak-quarkus-dist-$VERSION.tar.gz"
    [ -s "$archive" ] || die "Maven did not produce $archive"
    mkdir -p "$(dirname "$KC_HOME")"
    local unpack="$KC_HOME.tmp"
    rm -rf "$unpack"
    mkdir -p "$unpack"
    tar -xzf "$archive" -C "$unpack" --strip-components=1
    [ -x "$unpack/bin/kc.sh" ] || die "the archive has no bin/kc.sh"
    rm -rf "$KC_HOME"
    mv "$unpack" "$KC_HOME"
    say "Keycloak $VERSION unpacked in $KC_HOME"
}

server_tls() {
    # A throw-away server certificate for the HTTPS listener (its own self-signed key, 127.0.0.1/localhost).
    mkdir -p "$STATE/tls"
    chmod 700 "$STATE/tls"
    if [ ! -s "$STATE/tls/server.pem" ] || [ ! -s "$STATE/tls/server.key" ] \
            || ! openssl x509 -checkend 86400 -noout -in "$STATE/tls/server.pem" >/dev/null 2>&1; then
        (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=keycloak-dev" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
            -keyout "$STATE/tls/server.key" -out "$STATE/tls/server.pem" 2>/dev/null) \
            || die "could not create the HTTPS server certificate"
    fi
}

start() {
    [ -x "$KC_HOME/bin/kc.sh" ] || install
    [ -x "$KC_JAVA_HOME/bin/java" ] || die "no JDK at $KC_JAVA_HOME (set KEYCLOAK_JAVA_HOME)"
    export JAVA_HOME=$KC_JAVA_HOME
    export JAVA_OPTS_KC_HEAP=${KEYCLOAK_HEAP:-"-Xms128m -Xmx768m"}
    mkdir -p "$STATE"
    if [ -n "${KEYCLOAK_TRUSTSTORE:-}" ]; then
        [ -s "$KEYCLOAK_TRUSTSTORE" ] || die "KEYCLOAK_TRUSTSTORE $KEYCLOAK_TRUSTSTORE is missing or empty"
        if running_pid >/dev/null && ! cmp -s "$KEYCLOAK_TRUSTSTORE" "$STATE/truststore.pem"; then
            say "the trust store changed: restarting"
            stop
        fi
        cp "$KEYCLOAK_TRUSTSTORE" "$STATE/truststore.pem.tmp"
        mv "$STATE/truststore.pem.tmp" "$STATE/truststore.pem"
    fi
    if pid=$(running_pid); then
        if [ "${KEYCLOAK_FRESH:-0}" = 1 ]; then
            stop
        else
            wait_ready "$pid"
            status
            return 0
        fi
    fi
    for port in "$HTTP_PORT" "$HTTPS_PORT" "$MANAGEMENT_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port on 127.0.0.1 is already in use (another Keycloak not started by this script?)"
        fi
    done
    server_tls
    if [ "${KEYCLOAK_FRESH:-0}" = 1 ]; then
        rm -rf "$STATE/data"
    fi
    if [ ! -d "$STATE/data/h2" ] && [ -z "${KC_BOOTSTRAP_ADMIN_PASSWORD:-}" ]; then
        die "first start against an empty database: set KC_BOOTSTRAP_ADMIN_USERNAME and KC_BOOTSTRAP_ADMIN_PASSWORD"
    fi
    export KC_BOOTSTRAP_ADMIN_USERNAME=${KC_BOOTSTRAP_ADMIN_USERNAME:-admin}
    local trust=()
    if [ -s "$STATE/truststore.pem" ]; then
        trust=(--https-trust-store-file="$STATE/truststore.pem" --truststore-paths="$STATE/truststore.pem")
    else
        say "no KEYCLOAK_TRUSTSTORE: devices cannot authenticate with certificates on HTTPS"
    fi
    say "starting Keycloak $VERSION (HTTP 127.0.0.1:$HTTP_PORT, HTTPS 127.0.0.1:$HTTPS_PORT, management $MANAGEMENT_PORT)"
    # setsid: its own session, so a test runner's process group signals do not reach it.
    setsid "$KC_HOME/bin/kc.sh" start-dev \
        --http-host=127.0.0.1 --http-port="$HTTP_PORT" \
        --https-port="$HTTPS_PORT" \
        --https-certificate-file="$STATE/tls/server.pem" --https-certificate-key-file="$STATE/tls/server.key" \
        --https-client-auth=request "${trust[@]}" \
        --https-management-client-auth=none \
        --http-management-port="$MANAGEMENT_PORT" --health-enabled=true \
        --hostname-strict=false \
        --db=dev-file --db-url="jdbc:h2:file:$STATE/data/h2/keycloakdb;NON_KEYWORDS=VALUE" \
        </dev/null >"$STATE/keycloak.log" 2>&1 &
    echo $! >"$STATE/keycloak.pid"
    wait_ready "$!"
    status
}

wait_ready() {
    local pid=$1 waited=0
    until is_ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$STATE/keycloak.log" >&2 || true
            rm -f "$STATE/keycloak.pid"
            die "Keycloak exited during start (log: $STATE/keycloak.log)"
        fi
        if [ "$waited" -ge "$READY_TIMEOUT" ]; then
            tail -n 30 "$STATE/keycloak.log" >&2 || true
            # Not ready in time: stop it rather than leave a JVM behind (its own session: the whole group).
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            sleep 5
            kill -KILL -- "-$pid" 2>/dev/null || true
            rm -f "$STATE/keycloak.pid"
            die "Keycloak not ready after ${READY_TIMEOUT}s, stopped (log: $STATE/keycloak.log)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$STATE/keycloak.pid"
        say "not running"
        return 0
    fi
    say "stopping Keycloak (pid $pid)"
    # kc.sh execs java in the same process; TERM lets Quarkus shut down cleanly.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still running after 30 s: killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/keycloak.pid"
}

status() {
    if running_pid >/dev/null && is_ready; then
        say "ready: admin http://127.0.0.1:$HTTP_PORT, devices https://127.0.0.1:$HTTPS_PORT," \
            "health $ready_url, pid $(running_pid), log $STATE/keycloak.log"
        return 0
    fi
    say "not running"
    return 1
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
esac
