"""Shared set-up of the benchmarks: a SoftHSM token directory of their own."""
from __future__ import annotations

import os
from pathlib import Path


def temp_softhsm(work: Path) -> Path:
    """A SoftHSM configuration under ``work``, made the process's SOFTHSM2_CONF before PKCS#11 loads."""
    from hsm.softhsm import write_config

    directory = work / "softhsm"
    conf = write_config(directory)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["DEVICE_CA_TEST_SOFTHSM_DIR"] = str(directory)
    return conf
