#!/usr/bin/env bash
# Create the development SoftHSM token "device-ca" (softhsm.conf, tokens under var/softhsm/).
# The PINs are drawn at random into var/hsm-pin and var/hsm-so-pin (mode 0600) and handed to
# softhsm2-util through a pseudo-terminal, never on a command line.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOFTHSM2_CONF=${SOFTHSM2_CONF:-$PWD/softhsm.conf}
mkdir -p var/softhsm/tokens
python3 -m hsm.softhsm --label "${DEVICE_CA_HSM_TOKEN:-device-ca}" \
    --pin-file "${DEVICE_CA_HSM_PIN_FILE:-var/hsm-pin}" --so-pin-file var/hsm-so-pin
