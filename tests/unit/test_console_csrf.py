"""The console's CSRF tokens (web/console/csrf.py): bound to the certificate, expiring, compared in
constant time; the secret file made once, mode 0600, the same for every process."""
from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import stat

import pytest

from device_ca.ca.clock import FixedClock
from device_ca.errors import DeviceCAError, Kind
from device_ca.web.console import csrf as csrf_module
from device_ca.web.console.csrf import MAX_AGE, SECRET_FILE, Csrf, load_secret

T0 = dt.datetime(2026, 12, 5, 6, 0, tzinfo=dt.timezone.utc)
MINE, THEIRS = "ab" * 32, "cd" * 32


def _refused(csrf: Csrf, fingerprint: str, token: str | None) -> bool:
    try:
        csrf.check(fingerprint, token)
    except DeviceCAError as exc:
        assert exc.kind is Kind.FORBIDDEN
        return True
    return False


def test_a_token_is_good_for_its_certificate_only():
    csrf = Csrf(b"s" * 32, FixedClock(T0))
    token = csrf.token(MINE)
    assert not _refused(csrf, MINE, token)
    assert not _refused(csrf, MINE.upper(), token)               # hex case does not matter
    assert _refused(csrf, THEIRS, token)
    assert _refused(Csrf(b"t" * 32, FixedClock(T0)), MINE, token)    # another node's secret


@pytest.mark.parametrize("token", [None, "", "x", "123", "123.", ".abc", "abc.def", "-5." + "0" * 64,
                                   "1" * 13 + "." + "0" * 64])
def test_malformed_tokens_are_refused(token):
    assert _refused(Csrf(b"s" * 32, FixedClock(T0)), MINE, token)


def test_a_tampered_token_is_refused():
    csrf = Csrf(b"s" * 32, FixedClock(T0))
    issued, mac = csrf.token(MINE).split(".")
    assert _refused(csrf, MINE, f"{int(issued) + 1}.{mac}")         # a later time under the old MAC
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert _refused(csrf, MINE, f"{issued}.{flipped}")


def test_tokens_expire():
    clock = FixedClock(T0)
    csrf = Csrf(b"s" * 32, clock)
    token = csrf.token(MINE)
    clock.advance(MAX_AGE)
    assert not _refused(csrf, MINE, token)
    clock.advance(dt.timedelta(seconds=1))
    assert _refused(csrf, MINE, token)


def test_the_comparison_is_constant_time(monkeypatch):
    """check() compares MACs with hmac.compare_digest, never with ==."""
    calls = []
    real = csrf_module.hmac.compare_digest
    monkeypatch.setattr(csrf_module.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    csrf = Csrf(b"s" * 32, FixedClock(T0))
    csrf.check(MINE, csrf.token(MINE))
    assert len(calls) == 1


def test_the_secret_is_made_once_with_mode_0600(tmp_path):
    first = load_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]            # nothing left aside


def test_a_secret_others_may_read_is_refused(tmp_path):
    load_secret(tmp_path)
    os.chmod(tmp_path / SECRET_FILE, 0o644)
    with pytest.raises(DeviceCAError) as refused:
        load_secret(tmp_path)
    assert "0600" in refused.value.detail


def _load(directory: str, out) -> None:
    out.put(load_secret(__import__("pathlib").Path(directory)))


def test_racing_processes_share_one_secret(tmp_path):
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=_load, args=(str(tmp_path), out)) for _ in range(6)]
    for w in workers:
        w.start()
    found = {out.get(timeout=30) for _ in workers}
    for w in workers:
        w.join(timeout=30)
    assert found == {(tmp_path / SECRET_FILE).read_bytes()}
