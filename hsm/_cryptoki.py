"""ctypes access to the few PKCS#11 functions python-pkcs11 0.10 does not expose.

python-pkcs11 has no C_GetSessionInfo, no token session counts, and logs in only
inside ``Token.open(user_pin=...)``: a failed C_Login there leaks the session it
just opened, and a second login raises CKR_USER_ALREADY_LOGGED_IN after opening
one. So this package opens the session with python-pkcs11 and calls these through
the module's own CK_FUNCTION_LIST (PKCS#11 v2.40 Base §5.4.4 C_GetFunctionList):

* C_Initialize / C_Finalize (§5.4, general-purpose functions)
* C_GetTokenInfo (§5.5, slot and token management)
* C_CloseSession, C_GetSessionInfo, C_Login (§5.6, session management)

``dlopen`` of the same path returns the library instance python-pkcs11 already
loaded, so both see the same sessions. The structure layouts are those of the
Unix pkcs11.h (natural alignment, CK_ULONG = unsigned long); Windows packs them
to 1 byte and is not supported here.
"""
from __future__ import annotations

import ctypes
from typing import NamedTuple

CK_ULONG = ctypes.c_ulong
CKU_USER = 1
CKS_RO_USER_FUNCTIONS = 1
CKS_RW_USER_FUNCTIONS = 3
CK_UNAVAILABLE_INFORMATION = ctypes.c_ulong(-1).value


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    # CK_FUNCTION_LIST: a CK_VERSION, then 68 function pointers in the order of pkcs11f.h.
    _fields_ = [("version", _Version)] + [(f"f{i}", ctypes.c_void_p) for i in range(68)]


class _TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16), ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG), ("ulMaxSessionCount", CK_ULONG), ("ulSessionCount", CK_ULONG),
        ("ulMaxRwSessionCount", CK_ULONG), ("ulRwSessionCount", CK_ULONG),
        ("ulMaxPinLen", CK_ULONG), ("ulMinPinLen", CK_ULONG),
        ("ulTotalPublicMemory", CK_ULONG), ("ulFreePublicMemory", CK_ULONG),
        ("ulTotalPrivateMemory", CK_ULONG), ("ulFreePrivateMemory", CK_ULONG),
        ("hardwareVersion", _Version), ("firmwareVersion", _Version),
        ("utcTime", ctypes.c_char * 16),
    ]


class _SessionInfo(ctypes.Structure):
    _fields_ = [("slotID", CK_ULONG), ("state", CK_ULONG), ("flags", CK_ULONG),
                ("ulDeviceError", CK_ULONG)]


class TokenInfo(NamedTuple):
    label: str
    session_count: int | None      # None: the module reports CK_UNAVAILABLE_INFORMATION
    rw_session_count: int | None


class SessionInfo(NamedTuple):
    slot_id: int
    state: int
    flags: int

    @property
    def logged_in(self) -> bool:
        return self.state in (CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS)


_VOIDP = ctypes.CFUNCTYPE(CK_ULONG, ctypes.c_void_p)
_ULONG = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG)
_ULONG_PTR = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.c_void_p)
_LOGIN = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG)


class Cryptoki:
    """The raw function list of one loaded PKCS#11 module. Callers serialise the calls."""

    def __init__(self, dll: ctypes.CDLL):
        self._dll = dll  # keeps the dlopen reference alive
        get_list = dll.C_GetFunctionList
        get_list.restype = CK_ULONG
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        pointer = ctypes.POINTER(_FunctionList)()
        rv = get_list(ctypes.byref(pointer))
        if rv != 0 or not pointer:
            raise OSError(f"C_GetFunctionList returned 0x{rv:X}")
        table = pointer.contents
        self._table = table
        self._initialize = _VOIDP(table.f0)
        self._finalize = _VOIDP(table.f1)
        self._get_token_info = _ULONG_PTR(table.f6)
        self._close_session = _ULONG(table.f13)
        self._close_all_sessions = _ULONG(table.f14)
        self._get_session_info = _ULONG_PTR(table.f15)
        self._login = _LOGIN(table.f18)

    @classmethod
    def load(cls, path: str) -> "Cryptoki":
        """dlopen the module and read its function list; OSError when that is impossible."""
        return cls(ctypes.CDLL(path))

    def initialize(self) -> int:
        return int(self._initialize(None))

    def finalize(self) -> int:
        return int(self._finalize(None))

    def login_user(self, session: int, pin: str) -> int:
        data = pin.encode("utf-8")
        return int(self._login(session, CKU_USER, data, len(data)))

    def close_session(self, session: int) -> int:
        return int(self._close_session(session))

    def close_all_sessions(self, slot_id: int) -> int:
        return int(self._close_all_sessions(slot_id))

    def session_info(self, session: int) -> tuple[int, SessionInfo | None]:
        info = _SessionInfo()
        rv = int(self._get_session_info(session, ctypes.byref(info)))
        if rv != 0:
            return rv, None
        return rv, SessionInfo(info.slotID, info.state, info.flags)

    def token_info(self, slot_id: int) -> tuple[int, TokenInfo | None]:
        info = _TokenInfo()
        rv = int(self._get_token_info(slot_id, ctypes.byref(info)))
        if rv != 0:
            return rv, None

        def count(value: int) -> int | None:
            return None if value == CK_UNAVAILABLE_INFORMATION else int(value)

        label = info.label.decode("utf-8", "replace").rstrip(" \x00")
        return rv, TokenInfo(label, count(info.ulSessionCount), count(info.ulRwSessionCount))
