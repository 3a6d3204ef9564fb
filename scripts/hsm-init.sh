#!/usr/bin/env bash
# Set up the CA's token. Without an argument: the development SoftHSM token "device-ca"
# (softhsm.conf, tokens under var/softhsm/); the PINs are drawn at random into var/hsm-pin and
# var/hsm-so-pin (mode 0600) and handed to softhsm2-util through a pseudo-terminal, never on a
# command line.
#
#   scripts/hsm-init.sh opencryptoki        # openCryptoki's soft token: pkcsslotd started (needs root)
#   scripts/hsm-init.sh tpm                 # tpm2-pkcs11 on swtpm through tpm2-abrmd, under var/hsm/tpm
#   . var/hsm/<kind>/env                    # DEVICE_CA_HSM_MODULE, _TOKEN, _PIN_FILE and the module's settings
#   scripts/hsm-init.sh <kind> stop         # stops the daemons it started (the token's state stays)
#   DEVICE_CA_HSM_STATE=DIR scripts/hsm-init.sh <kind> ...   # elsewhere than var/hsm/<kind>
#
# PINs are in var/hsm/<kind>/pin and so-pin (mode 0600), set through PKCS#11 (C_InitToken, C_InitPIN).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-}
if [ -z "$kind" ]; then
    export SOFTHSM2_CONF=${SOFTHSM2_CONF:-$PWD/softhsm.conf}
    mkdir -p var/softhsm/tokens
    exec python3 -m hsm.softhsm --label "${DEVICE_CA_HSM_TOKEN:-device-ca}" \
        --pin-file "${DEVICE_CA_HSM_PIN_FILE:-var/hsm-pin}" --so-pin-file var/hsm-so-pin
fi
case "$kind" in
    softhsm|opencryptoki|tpm) ;;
    *) echo "usage: scripts/hsm-init.sh [softhsm|opencryptoki|tpm] [stop]" >&2; exit 2 ;;
esac
exec python3 -m hsm.provision "${2:-start}" --kind "$kind" --dir "${DEVICE_CA_HSM_STATE:-var/hsm/$kind}" \
    --label "${DEVICE_CA_HSM_TOKEN:-device-ca}"
