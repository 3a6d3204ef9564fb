"""The fuzz targets (targets.py): findings kept as regression tests, and each target run briefly
under atheris in CI (a few seconds each; the long runs are `tests/fuzz/run.py TARGET -runs=1000000`)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device_ca.errors import DeviceCAError, Kind

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402


def test_finding_csr_with_an_invalid_version_is_malformed():
    """Found by fuzzing: cryptography raises InvalidVersion (not a ValueError) for a CSR whose
    version is not 0; it escaped as an internal error (HTTP 500 on EST)."""
    from device_ca.ca import csr

    with pytest.raises(DeviceCAError) as refused:
        csr.load((HERE / "findings" / "csr-invalid-version.der").read_bytes())
    assert refused.value.kind is Kind.MALFORMED and "not a PKCS#10" in refused.value.detail


@pytest.mark.parametrize("content, reason", [
    (b'device_id_pattern = "*"\nsubject = "CN={device_id}"\n', "device_id_pattern is not a regular expression"),
    (b"\xc9", "not UTF-8 text"),
    (b'subject = "CN={device_id}"\nvalidity = "99999999999999999999d"\n', "too long"),
    (b'device_id_pattern = "a{99999999999}"\nsubject = "CN={device_id}"\n', "device_id_pattern is not a regular"),
])
def test_findings_policy_files_are_refused_with_the_reason(tmp_path, content, reason):
    """Found by fuzzing: a pattern that is no regular expression (re.error, or OverflowError for a
    repetition count over what re allows), a file that is no
    UTF-8 (UnicodeDecodeError) and a duration longer than a timedelta holds (OverflowError)
    escaped load_policy as other exceptions than PolicyError."""
    from device_ca.policy.model import PolicyError, load_policy

    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    with pytest.raises(PolicyError, match=reason):
        load_policy(path)


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_every_seed_is_handled(target):
    for seed in sorted((HERE / "corpus" / target).iterdir()):
        targets.TARGETS[target](seed.read_bytes())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_target_survives_a_brief_fuzzing_run(tmp_path, target):
    corpus = tmp_path / "corpus"
    shutil.copytree(HERE / "corpus" / target, corpus)
    proc = subprocess.run([sys.executable, str(HERE / "run.py"), target, "-max_total_time=3", "-timeout=5",
                           str(corpus)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = re.findall(r"^#(\d+)\s+DONE", proc.stderr, re.MULTILINE)
    assert runs and int(runs[-1]) > 1000, proc.stderr[-1000:]
