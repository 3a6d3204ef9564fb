"""Shared set-up of the benchmarks: a SoftHSM token directory of their own."""
from __future__ import annotations

import os
from pathlib import Path


def temp_softhsm(work: Path) -> Path:
    """A SoftHSM configuration under ``work``, made the process's SOFTHSM2_CONF before PKCS#11 loads."""
    directory = work / "softhsm"
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["DEVICE_CA_TEST_SOFTHSM_DIR"] = str(directory)
    return conf
