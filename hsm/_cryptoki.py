"""ctypes access to the few PKCS#11 functions python-pkcs11 0.10 does not expose.

python-pkcs11 has no C_GetSessionInfo, no token session counts, and logs in only
inside ``Token.open(user_pin=...)``: a failed C_Login there leaks the session it
just opened, and a second login raises CKR_USER_ALREADY_LOGGED_IN after opening
one. So this package opens the session with python-pkcs11 and calls these through
the module's own CK_FUNCTION_LIST (PKCS#11 v2.40 Base §5.4.4 C_GetFunctionList):

* C_Initialize / C_Finalize (§5.4, general-purpose functions)
* C_GetTokenInfo (§5.5, slot and token management)
* C_CloseSession, C_GetSessionInfo, C_Login (§5.6, session management)
* C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_Logout: only for setting up a token
  (``hsm.provision``), never on the CA's own session

``dlopen`` of the same path returns the library instance python-pkcs11 already
loaded, so both see the same sessions. The structure layouts are those of the
Unix pkcs11.h (natural alignment, CK_ULONG = unsigned long); Windows packs them
to 1 byte and is not supported here.
"""
from __future__ import annotations

import ctypes
from typing import NamedTuple

CK_ULONG = ctypes.c_ulong
CKU_SO = 0
CKU_USER = 1
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
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
    flags: int = 0
    manufacturer: str = ""
    model: str = ""
    max_session_count: int | None = None
    min_pin_length: int = 0
    max_pin_length: int = 0


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
_INIT_TOKEN = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p)
_INIT_PIN = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG)
_SET_PIN = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, CK_ULONG)
_OPEN_SESSION = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, CK_ULONG, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.POINTER(CK_ULONG))
_GET_SLOT_LIST = ctypes.CFUNCTYPE(CK_ULONG, ctypes.c_ubyte, ctypes.POINTER(CK_ULONG), ctypes.POINTER(CK_ULONG))


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
        self._get_slot_list = _GET_SLOT_LIST(table.f4)
        self._init_token = _INIT_TOKEN(table.f9)
        self._init_pin = _INIT_PIN(table.f10)
        self._set_pin = _SET_PIN(table.f11)
        self._open_session = _OPEN_SESSION(table.f12)
        self._logout = _ULONG(table.f19)

    @classmethod
    def load(cls, path: str) -> "Cryptoki":
        """dlopen the module and read its function list; OSError when that is impossible."""
        return cls(ctypes.CDLL(path))

    def initialize(self) -> int:
        return int(self._initialize(None))

    def finalize(self) -> int:
        return int(self._finalize(None))

    def login_user(self, session: int, pin: str) -> int:
        return self.login(session, CKU_USER, pin)

    def login(self, session: int, user_type: int, pin: str) -> int:
        data = pin.encode("utf-8")
        return int(self._login(session, user_type, data, len(data)))

    def logout(self, session: int) -> int:
        return int(self._logout(session))

    def slot_list(self, token_present: bool = False) -> tuple[int, list[int]]:
        count = CK_ULONG(0)
        rv = int(self._get_slot_list(int(token_present), None, ctypes.byref(count)))
        if rv != 0:
            return rv, []
        slots = (CK_ULONG * max(count.value, 1))()
        rv = int(self._get_slot_list(int(token_present), slots, ctypes.byref(count)))
        return rv, [int(slots[i]) for i in range(count.value)] if rv == 0 else []

    def open_session(self, slot_id: int) -> tuple[int, int]:
        handle = CK_ULONG(0)
        rv = int(self._open_session(slot_id, CKF_RW_SESSION | CKF_SERIAL_SESSION, None, None, ctypes.byref(handle)))
        return rv, int(handle.value)

    def init_token(self, slot_id: int, so_pin: str, label: str) -> int:
        data = so_pin.encode("utf-8")
        padded = label.encode("utf-8")[:32].ljust(32, b" ")
        return int(self._init_token(slot_id, data, len(data), padded))

    def init_pin(self, session: int, pin: str) -> int:
        data = pin.encode("utf-8")
        return int(self._init_pin(session, data, len(data)))

    def set_pin(self, session: int, old: str, new: str) -> int:
        a, b = old.encode("utf-8"), new.encode("utf-8")
        return int(self._set_pin(session, a, len(a), b, len(b)))

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

        def text(value: bytes) -> str:
            return value.decode("utf-8", "replace").rstrip(" \x00")

        # CK_EFFECTIVELY_INFINITE (0) and CK_UNAVAILABLE_INFORMATION both mean "no limit we can use".
        limit = count(info.ulMaxSessionCount) or None
        if limit is not None and limit >= 1 << 32:  # openCryptoki reports ULONG_MAX - 1
            limit = None
        return rv, TokenInfo(text(info.label), count(info.ulSessionCount), count(info.ulRwSessionCount),
                             int(info.flags), text(info.manufacturerID), text(info.model), limit,
                             int(info.ulMinPinLen), int(info.ulMaxPinLen))
