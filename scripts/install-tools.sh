#!/usr/bin/env bash
# Install the third-party test tools for the EST/TLS integration tests and benchmarks,
# skipping whatever is already there (idempotent; run by CI as root on a fresh Debian 12).
#   Debian:  nginx-light (the nginx binary, never left running as a system service), wrk,
#            libnginx-mod-stream (TLS passthrough in deploy/nginx), mosquitto + mosquitto-clients
#            (broker binary and mosquitto_pub/sub; the system broker is never left running on
#            1883), golang-cfssl (cfssl: ocspsign/ocspserve peer), prometheus (promtool checks
#            deploy/prometheus/alerts.yml; the system Prometheus is never left running)
#   Checked: unshare (util-linux) and ip (iproute2), for the openssl ocsp benchmark peer
#   Go:      estclient from github.com/globalsign/est/cmd/estclient, into /usr/local/bin
# Environment: ESTCLIENT_VERSION (default v1.0.6, the last tag; "latest" is refused by the proxy here),
#              GO (default: go on PATH, else /usr/local/go/bin/go), GOBIN (default /usr/local/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "install-tools: ERROR: $*" >&2; exit 1; }
say() { echo "install-tools: $*"; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
installed=()

# --- Debian packages -------------------------------------------------------------------------
packages=(nginx-light libnginx-mod-stream wrk mosquitto mosquitto-clients golang-cfssl prometheus)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q || die "apt-get update failed"
    # Keep the package scripts from starting nginx on port 80: a policy-rc.d that answers 101
    # ("action forbidden") for the duration of the install, unless one is already in place.
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        made_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    [ -z "$made_policy" ] || $SUDO rm -f "$policy"
    [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
    installed+=("${missing[@]}")
fi
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx binary not found after installing nginx-light"
command -v wrk >/dev/null || die "wrk not found after installing it"
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || die "mosquitto binary not found after installing mosquitto"
command -v mosquitto_pub >/dev/null || die "mosquitto_pub not found after installing mosquitto-clients"
command -v cfssl >/dev/null || die "cfssl not found after installing golang-cfssl"
command -v promtool >/dev/null || die "promtool not found after installing prometheus"
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || die "nginx stream module not found after installing libnginx-mod-stream"
command -v unshare >/dev/null || die "unshare not found (Debian util-linux, Essential: should always be there)"
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || die "ip not found (Debian iproute2)"

# No system nginx may stay running (tests start their own on free loopback ports). Without
# systemd as PID 1 the init script is what starts it; stop it and disable it either way.
if [ -e /etc/init.d/nginx ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
    else
        $SUDO service nginx stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null && $SUDO update-rc.d nginx disable >/dev/null 2>&1 || true
    fi
fi
# Whatever started it, a master with the system configuration must not survive.
if [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    pid=$(cat /run/nginx.pid)
    say "stopping the system nginx (pid $pid)"
    $SUDO kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && $SUDO kill -KILL "$pid" 2>/dev/null || true
fi

# Same for the system mosquitto (Debian starts it on 0.0.0.0:1883 from /etc/init.d/mosquitto;
# tests start their own broker on a free loopback port with their own configuration).
if [ -e /etc/init.d/mosquitto ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
    else
        $SUDO service mosquitto stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null && $SUDO update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
fi
if [ -s /run/mosquitto/mosquitto.pid ] && kill -0 "$(cat /run/mosquitto/mosquitto.pid)" 2>/dev/null; then
    pid=$(cat /run/mosquitto/mosquitto.pid)
    say "stopping the system mosquitto (pid $pid)"
    $SUDO kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && $SUDO kill -KILL "$pid" 2>/dev/null || true
fi

# And the system Prometheus (only promtool is wanted).
if [ -e /etc/init.d/prometheus ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    else
        $SUDO service prometheus stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null && $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

# --- estclient (Go) --------------------------------------------------------------------------
# The Go module proxy reachable here serves github.com/globalsign/est only at exact tagged
# versions: it refuses the version list (403), so "@latest" cannot resolve, and
# "go install MODULE@v1.0.6" fails too because it asks for the list to check for deprecation.
# Building inside a throw-away module with "go get MODULE@VERSION" + "go install PACKAGE"
# avoids that lookup. v1.0.6 (2021-02-21) is the last tagged release. The HSM support in it
# needs cgo (miekg/pkcs11), so a C compiler is required.
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GOBIN=${GOBIN:-/usr/local/bin}
ESTCLIENT_VERSION=${ESTCLIENT_VERSION:-v1.0.6}
if command -v estclient >/dev/null || [ -x "$GOBIN/estclient" ]; then
    say "estclient already installed: $(command -v estclient || echo "$GOBIN/estclient")"
else
    [ -x "$GO" ] || die "no Go toolchain (looked for go on PATH and /usr/local/go/bin/go)"
    command -v cc >/dev/null || command -v gcc >/dev/null || die "estclient needs cgo: install gcc"
    export HOME=${HOME:-/root}
    export GOPATH=${GOPATH:-$("$GO" env GOPATH)}
    export GOCACHE=${GOCACHE:-$("$GO" env GOCACHE)}
    export GOTOOLCHAIN=${GOTOOLCHAIN:-local}   # never fetch another toolchain
    export GOFLAGS=${GOFLAGS:--buildvcs=false}
    export CGO_ENABLED=1
    module=github.com/globalsign/est
    package=$module/cmd/estclient
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    built=""
    for v in "$ESTCLIENT_VERSION" v1.0.6; do
        say "building $package@$v (GOBIN=$GOBIN, $("$GO" version | cut -d' ' -f3))"
        if (cd "$build" && rm -f go.mod go.sum && "$GO" mod init estclient-build >/dev/null 2>&1 \
                && "$GO" get "$package@$v" && "$GO" install "$package"); then
            built=$v
            break
        fi
        say "building $package@$v failed"
        [ "$v" != v1.0.6 ] || break
    done
    [ -n "$built" ] || die "could not build $package (tried $ESTCLIENT_VERSION and v1.0.6)"
    [ -x "$GOBIN/estclient" ] || die "estclient not found in $GOBIN after go install"
    installed+=("estclient $built -> $GOBIN/estclient")
fi
command -v estclient >/dev/null || say "note: $GOBIN is not on PATH (tests find estclient on PATH, in /usr/local/bin or ~/go/bin)"

if [ ${#installed[@]} -gt 0 ]; then
    say "installed: ${installed[*]}"
else
    say "nothing to install"
fi
say "nginx: $(nginx -v 2>&1 | sed 's/.*: //'); wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}'); estclient: $(command -v estclient || echo "$GOBIN/estclient")"
say "mosquitto: $(dpkg-query -W -f='${Version}' mosquitto); cfssl: $(dpkg-query -W -f='${Version}' golang-cfssl); unshare: $(command -v unshare)"
