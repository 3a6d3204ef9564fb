"""Threads, fork, session counts and outages (reliability cases F6, F8, F9, L2, L3)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hsm import HsmError, Token, TokenConfig, open_token
from hsm.library import call_lock, load
from hsm.softhsm import init_token

pytestmark = pytest.mark.integration

ECDSA = ec.ECDSA(hashes.SHA256())


def _session_handles(module: str, token_label: str) -> tuple[int, int]:
    """(open sessions in this process, handle of a probe session), via C_GetSessionInfo.

    SoftHSM reports CK_UNAVAILABLE_INFORMATION as the token's session count and never
    reuses a handle, so the sessions that exist are the handles below a fresh probe
    session for which C_GetSessionInfo succeeds.
    """
    with call_lock(module):
        lib = load(module)
        _, info = lib.raw.token_info(lib.pkcs11.get_token(token_label=token_label).slot.slot_id)
        probe = lib.pkcs11.get_token(token_label=token_label).open()
        try:
            count = sum(1 for handle in range(1, probe.handle) if lib.raw.session_info(handle)[0] == 0)
        finally:
            probe.close()
    if info is not None and info.session_count is not None:  # a module that does count
        assert info.session_count == count
    return count, probe.handle


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_threads_share_one_session(hsm_token, hsm_keys) -> None:
    key = hsm_keys["ec:P-256"]
    public = key.public_key()
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    counts = [0] * 8

    def worker(index: int) -> None:
        try:
            start.wait()
            for n in range(200):
                data = f"thread {index} message {n}".encode()
                public.verify(key.sign(data, ECDSA), data, ECDSA)
                counts[index] += 1
                if n % 50 == 0:  # other calls interleaved with the signing
                    hsm_token.ping()
                    assert "test-ec:P-256" in hsm_token.labels()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert counts == [200] * 8


def test_concurrent_open_logs_in_once(hsm_softhsm) -> None:
    module, label = hsm_softhsm.module, hsm_softhsm.labels["spare"]
    before, _ = _session_handles(module, label)
    token = Token(hsm_softhsm.config("spare"))
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            start.wait()
            token.open()
            token.ping()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert _session_handles(module, label)[0] == before + 1
    token.close()
    assert _session_handles(module, label)[0] == before


def test_many_signatures_keep_one_session(hsm_softhsm, hsm_token, hsm_keys) -> None:
    key = hsm_keys["ec:P-256"]
    hsm_token.ping()
    sessions, probe = _session_handles(hsm_softhsm.module, hsm_token.token_label)
    fds = _open_fds()
    start = time.perf_counter()
    for n in range(10_000):
        key.sign(n.to_bytes(4, "big"), ECDSA)
    rate = 10_000 / (time.perf_counter() - start)
    after, probe_after = _session_handles(hsm_softhsm.module, hsm_token.token_label)
    assert after == sessions
    assert probe_after == probe + 1  # not a single session was opened (or closed) meanwhile
    assert _open_fds() <= fds
    print(f"P-256 signatures/s, one thread: {rate:.0f}")


def test_wrong_pin_leaves_no_session(hsm_softhsm) -> None:
    module, label = hsm_softhsm.module, hsm_softhsm.labels["spare"]
    before, _ = _session_handles(module, label)
    token = Token(TokenConfig(module, label, "not-" + hsm_softhsm.pin))
    for _ in range(3):
        with pytest.raises(HsmError) as info:
            token.open()
        assert info.value.reason == "pin" and hsm_softhsm.pin not in str(info.value)
    assert _session_handles(module, label)[0] == before


def _in_child(body) -> int:
    """Run ``body`` in a forked child; the child's exit code is body's return value."""
    pid = os.fork()
    if pid == 0:  # never return into pytest from the child
        code = 99
        try:
            code = body()
        except BaseException:  # noqa: BLE001
            code = 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_use_after_fork_is_refused(hsm_token, hsm_keys) -> None:
    key = hsm_keys["ec:P-256"]
    key.sign(b"parent", ECDSA)

    def child() -> int:
        for call in (lambda: key.sign(b"child", ECDSA), hsm_token.ping, hsm_token.open,
                     hsm_token.labels, lambda: hsm_token.find_key(key.label)):
            try:
                call()
            except HsmError as error:
                if error.reason != "fork" or "open the token in each worker after forking" not in str(error):
                    return 1
            else:
                return 2
        return 0

    assert _in_child(child) == 0
    key.public_key().verify(key.sign(b"parent again", ECDSA), b"parent again", ECDSA)


def test_child_opens_its_own_token(hsm_softhsm, hsm_token, hsm_keys) -> None:
    label = hsm_keys["ec:P-384"].label
    public = hsm_keys["ec:P-384"].public_key()
    unopened = Token(hsm_softhsm.config("spare"))  # created before the fork, opened after it

    def child() -> int:
        hsm_token.close()  # forgets the parent's session without touching it
        token = Token(hsm_softhsm.config("main"))
        key = token.find_key(label)
        for n in range(50):
            data = f"child {n}".encode()
            public.verify(key.sign(data, ec.ECDSA(hashes.SHA384())), data, ec.ECDSA(hashes.SHA384()))
        unopened.ping()
        hsm_token.open()  # the inherited object works again once reopened here
        hsm_token.ping()
        token.close()
        return 0

    assert _in_child(child) == 0
    hsm_token.ping()  # the parent's session survived the child
    key = hsm_keys["ec:P-384"]
    public.verify(key.sign(b"parent", ec.ECDSA(hashes.SHA384())), b"parent", ec.ECDSA(hashes.SHA384()))


def test_session_lost_then_reopened(hsm_softhsm) -> None:
    token = Token(hsm_softhsm.config("spare"))
    key = token.find_key("lost-session") or token.generate_key("lost-session", "ec:P-256")
    key.sign(b"before", ECDSA)
    with call_lock(token.module):  # simulate CKR_SESSION_HANDLE_INVALID: the session vanishes
        assert load(token.module).raw.close_session(token._session.handle) == 0
    with pytest.raises(HsmError) as info:
        key.sign(b"during", ECDSA)
    assert info.value.reason == "device" and "SessionHandleInvalid" in str(info.value)
    key.public_key().verify(key.sign(b"after", ECDSA), b"after", ECDSA)  # reopened on the next call
    with call_lock(token.module):
        load(token.module).raw.close_session(token._session.handle)
    with pytest.raises(HsmError) as info:
        token.ping()
    assert info.value.reason == "device"
    token.ping()
    token.close()


def test_token_disappears_and_comes_back(hsm_softhsm, hsm_token, hsm_keys, tmp_path) -> None:
    token = Token(hsm_softhsm.config("gone"))
    token.retry_interval = 0.0
    key = token.generate_key("ca-gone", "ec:P-256")
    key.sign(b"before", ECDSA)
    directory = hsm_softhsm.token_dir("gone")
    parked = tmp_path / "parked-token"
    shutil.move(directory, parked)
    try:
        with pytest.raises(HsmError) as info:
            key.sign(b"gone", ECDSA)
        assert info.value.reason == "device"
        for call in (token.ping, lambda: key.sign(b"still gone", ECDSA), token.labels):
            with pytest.raises(HsmError) as info:
                call()
            assert info.value.reason == "device"
        token.retry_interval = 60.0  # after one more failed attempt, calls fail fast without PKCS#11
        for _ in range(2):
            with pytest.raises(HsmError) as info:
                token.ping()
        assert info.value.reason == "device" and "retrying" in str(info.value)
        token.retry_interval = 0.0
    finally:
        shutil.move(parked, directory)
    time.sleep(0.01)
    token.ping()
    key.public_key().verify(key.sign(b"back", ECDSA), b"back", ECDSA)
    # The module was re-initialised to see the token again; the main token reconnects by itself.
    main_key = hsm_keys["ec:P-256"]
    main_key.public_key().verify(main_key.sign(b"main", ECDSA), b"main", ECDSA)
    hsm_token.ping()
    token.close()


def test_token_created_after_the_module_was_loaded(hsm_softhsm, hsm_token, hsm_keys) -> None:
    hsm_token.ping()  # the module is loaded and initialised before the new token exists
    label = hsm_softhsm.labels["main"].replace("-main", "-late")
    init_token(label, hsm_softhsm.pin, hsm_softhsm.pin, env=hsm_softhsm.env())
    try:
        late = open_token(TokenConfig(hsm_softhsm.module, label, hsm_softhsm.pin))
        key = late.generate_key("late-key", "ec:P-256")
        key.public_key().verify(key.sign(b"late", ECDSA), b"late", ECDSA)
        main_key = hsm_keys["ec:P-256"]  # re-initialising the module did not break the other token
        main_key.public_key().verify(main_key.sign(b"main", ECDSA), b"main", ECDSA)
        late.close()
    finally:
        subprocess.run(["softhsm2-util", "--delete-token", "--token", label],
                       capture_output=True, env=hsm_softhsm.env())
