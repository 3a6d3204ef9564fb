"""Loading a PKCS#11 module once per process, and re-initialising it after a fork or an outage.

PKCS#11 v2.40 Base §5.4 (general-purpose functions): C_Initialize is called once per
application, C_Finalize ends it. python-pkcs11 0.10 keeps one ``pkcs11.lib`` per module
path for the whole process (``pkcs11._loaded``) and initialises it with NULL arguments,
i.e. without CKF_OS_LOCKING_OK: the module may assume a single thread. Hence one lock
per module per process (``call_lock``), held around every call into the module.

Fork (PKCS#11 v2.40 Usage Guide, "Applications and processes"): a child is a separate
application and must call C_Initialize itself. SoftHSM 2.6.1 does not notice the fork
and answers CKR_CRYPTOKI_ALREADY_INITIALIZED, so a child first finalises the state it
inherited (its own copy; the parent is not affected) and initialises again; openCryptoki
3.8 behaves the same way. tpm2-pkcs11 1.9 cannot: its inherited TPM connection is the
parent's, so a child of a process that loaded it is refused (HsmError "fork") before any
call reaches the module. device-ca loads modules only after forking.

Outage: SoftHSM reads its token directory at C_Initialize only. When the token comes
back after it vanished, only C_Finalize + C_Initialize makes it visible again; every
session of the process dies with that, so ``Library.generation`` is bumped and each
Token reopens its session when it sees a new generation.
"""
from __future__ import annotations

import os
import threading

import pkcs11
from pkcs11.exceptions import PKCS11Error

from hsm._cryptoki import Cryptoki
from hsm.errors import CKR_CRYPTOKI_ALREADY_INITIALIZED, CKR_OK, HsmError, ckr_name, pkcs11_error_name

# CK_INFO.manufacturerID of tpm2-pkcs11 (https://github.com/tpm2-software/tpm2-pkcs11).
TPM2_PKCS11 = "tpm2-software"
# Modules whose C_Initialize state must not be touched in a forked child (manufacturerID prefixes).
FORK_UNSAFE = (TPM2_PKCS11,)

_registry_lock = threading.Lock()
_call_locks: dict[str, threading.Lock] = {}
_libraries: dict[str, "Library"] = {}


def _reset_locks_in_child() -> None:
    # Locks inherited from the parent may be held by a parent thread that does not exist here.
    global _registry_lock
    _registry_lock = threading.Lock()
    _call_locks.clear()


os.register_at_fork(after_in_child=_reset_locks_in_child)


def _canonical(path: str) -> str:
    # Two spellings of one file (a symlink) are one library: one lock, one registry entry.
    return os.path.realpath(path)


def call_lock(module: str) -> threading.Lock:
    """The lock every PKCS#11 call into ``module`` is made under, in this process."""
    key = _canonical(module)
    with _registry_lock:
        lock = _call_locks.get(key)
        if lock is None:
            lock = _call_locks[key] = threading.Lock()
        return lock


class Library:
    """One loaded, initialised PKCS#11 module. Use only under ``call_lock(path)``."""

    def __init__(self, path: str, lib: "pkcs11._pkcs11.lib", raw: Cryptoki):
        self.path = path
        self.pkcs11 = lib
        self.raw = raw
        self.pid = os.getpid()
        self.generation = 0
        self.manufacturer = str(lib.manufacturer_id)  # CK_INFO.manufacturerID, read once in the loading process

    def __repr__(self) -> str:
        return f"Library({self.path!r}, pid={self.pid}, generation={self.generation})"

    def reinitialize(self) -> None:
        """C_Finalize then C_Initialize: closes every session of this process on the module."""
        try:
            self.pkcs11.finalize()
        except PKCS11Error:
            pass  # a module that lost its device may refuse C_Finalize; initialise anyway
        try:
            self.pkcs11.initialize()
        except PKCS11Error as exc:
            raise HsmError("device", f"C_Initialize of {self.path} failed ({pkcs11_error_name(exc)})") from exc
        finally:
            self.generation += 1

    def _initialize_in_child(self) -> None:
        if self.manufacturer.startswith(FORK_UNSAFE):
            # tpm2-pkcs11 keeps its TPM connection (tabrmd over D-Bus) across fork: a C_Finalize here
            # flushes the parent's TPM objects and its C_Initialize times out on the inherited D-Bus connection.
            raise HsmError("fork", f"{self.path} was initialised before this process was forked and cannot be "
                                   "initialised again in it (tpm2-pkcs11 shares the parent's TPM connection); "
                                   "load the module only after forking")
        rv = self.raw.initialize()
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            self.reinitialize()
        elif rv != CKR_OK:
            raise HsmError("module", f"C_Initialize of {self.path} failed in this process ({ckr_name(rv)})")
        else:
            self.generation += 1
        self.pid = os.getpid()


# What to check when a module's C_Initialize fails, by a part of its file name.
_HINTS = {
    "softhsm": "; check SOFTHSM2_CONF",
    "pkcs11_api": "; is openCryptoki's pkcsslotd running?",
    "tpm2_pkcs11": "; check TPM2_PKCS11_STORE and TPM2_PKCS11_TCTI (is tpm2-abrmd or the TPM reachable?)",
}


def load(path: str) -> Library:
    """The initialised module at ``path`` for this process; HsmError("module") when unusable.

    Call with ``call_lock(path)`` held.
    """
    key = _canonical(path)
    lib = _libraries.get(key)
    if lib is not None:
        if lib.pid != os.getpid():
            lib._initialize_in_child()
        elif not lib.pkcs11.initialized:  # a failed reinitialize() left it finalised
            try:
                lib.pkcs11.initialize()
            except PKCS11Error as exc:
                raise HsmError("device", f"C_Initialize of {path} failed ({pkcs11_error_name(exc)})") from exc
            lib.generation += 1
        return lib

    if not os.path.isfile(path):
        raise HsmError("module", f"PKCS#11 module {path} not found")
    try:
        # ctypes first: it reports a file that is not a PKCS#11 module without touching python-pkcs11.
        raw = Cryptoki.load(key)
    except (OSError, AttributeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HsmError("module", f"cannot load PKCS#11 module {path}: {detail}") from None
    try:
        loaded = pkcs11.lib(key)  # dlopen + C_GetFunctionList + C_Initialize(NULL)
    except PKCS11Error as exc:
        hint = _HINTS.get(next((k for k in _HINTS if k in os.path.basename(path).lower()), ""), "")
        raise HsmError("module", f"PKCS#11 module {path} failed to initialise ({pkcs11_error_name(exc)}){hint}") from None
    lib = Library(path, loaded, raw)
    _libraries[key] = lib
    return lib
