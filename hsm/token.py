"""Token: one logged-in session per process on a PKCS#11 token, every call under one lock.

PKCS#11 v2.40 Base Specification sections used here:
* §5.5 slot and token management: C_GetSlotList / C_GetTokenInfo find the token by label.
* §5.6 session management: one R/W session (C_OpenSession); C_Login once, where
  CKR_USER_ALREADY_LOGGED_IN counts as success because the login state is shared by all
  sessions of the application; no C_Logout (it would log out every session of the
  process) - C_CloseSession of the last session ends the login. C_GetSessionInfo and
  C_GetTokenInfo are the health check.
* §5.7 object management: C_FindObjects by CKA_CLASS + CKA_LABEL.
* §5.11 signing: C_SignInit + C_Sign; §5.14 key management: C_GenerateKeyPair.
* §4.4 storage objects and §4.9 private key objects: CKA_TOKEN, CKA_PRIVATE,
  CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE.

Processes: the PID that opened the Token owns it; any use in another process (a
forked child) raises HsmError("fork"). Open a Token in each worker after the fork.
Outages: an error meaning "session or token gone" drops the session; the next call
reopens it (at most one attempt per ``retry_interval`` seconds while it keeps failing), and
when reopening fails too, re-initialises the module first (a daemon such as pkcsslotd or
tpm2-abrmd that was restarted is only reached again through a new C_Initialize).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass, TokenFlag
from pkcs11.exceptions import PKCS11Error

from hsm import keys
from hsm.config import TokenConfig
from hsm.errors import (CKR_OK, CKR_USER_ALREADY_LOGGED_IN, PIN_FAILURES, HsmError, ckr_name,
                        loses_session, pkcs11_error_name)
from hsm.keys import Pkcs11EcPrivateKey, Pkcs11PrivateKey, Pkcs11RsaPrivateKey
from hsm.library import TPM2_PKCS11, Library, call_lock, load

FORK_MESSAGE = "PKCS#11 was opened before fork; open the token in each worker after forking"


class Token:
    """A PKCS#11 token by label. Creating it touches nothing; open() (or first use) logs in."""

    retry_interval: float = 1.0  # seconds between reconnect attempts while the token stays away

    def __init__(self, config: TokenConfig):
        self._config = config
        self._lock_obj: threading.Lock | None = None
        self._lock_pid = -1
        self._lib: Library | None = None
        self._session: Any = None          # pkcs11 Session
        self._slot_id = 0
        self._generation = -1
        self._owner_pid: int | None = None  # PID that opened the token; None while closed
        self._handles: dict[str, Any] = {}  # label -> pkcs11 PrivateKey of the current session
        self._mechanisms: frozenset[int] = frozenset()  # C_GetMechanismList of the token's slot
        self._slot: Any = None
        self._broken: str | None = None
        self._last_attempt = float("-inf")

    @property
    def token_label(self) -> str:
        return self._config.token_label

    @property
    def module(self) -> str:
        return self._config.module

    def __repr__(self) -> str:
        state = "open" if self._session is not None else ("unavailable" if self._broken else "closed")
        return f"Token(module={self.module!r}, token_label={self.token_label!r}, {state})"

    # -- public API ---------------------------------------------------------------------

    def open(self) -> None:
        """Load the module, find the token, open one R/W session and log in. Idempotent."""
        with self._locked():
            self._ensure()

    def generate_key(self, label: str, spec: str) -> Pkcs11PrivateKey:
        """Generate a non-extractable key pair on the token; both halves get ``label`` and one CKA_ID."""
        if spec not in keys.KEY_SPECS:
            raise HsmError("key", f"unsupported key spec {spec!r}; use one of {', '.join(keys.KEY_SPECS)}")
        if not isinstance(label, str) or not label:
            raise HsmError("key", "a key label must be a non-empty string")
        kind, param = keys.KEY_SPECS[spec]
        with self._locked():
            self._ensure()
            self._check_keygen(spec)
            try:
                taken = bool(self._find(None, label))
            except PKCS11Error as exc:
                raise self._fail("C_FindObjects", exc) from exc
            if taken:
                raise HsmError("exists", f"token {self.token_label!r} already holds an object labelled {label!r}")
            key_id = os.urandom(16)
            common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
            # Sign-only where the module allows it. tpm2-pkcs11 makes every key a TPM object with both
            # the sign and decrypt attributes and refuses (CKR_GENERAL_ERROR) a template that says
            # CKA_ENCRYPT/CKA_DECRYPT false; the key is still sensitive and never extractable.
            dual = self._lib.manufacturer.startswith(TPM2_PKCS11)
            public = {**common, Attribute.PRIVATE: False, Attribute.VERIFY: True,
                      Attribute.ENCRYPT: dual, Attribute.WRAP: False}
            private = {**common, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                       Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DECRYPT: dual,
                       Attribute.UNWRAP: False, Attribute.DERIVE: False}
            if kind == "ec":
                public[Attribute.EC_PARAMS] = keys.ec_params_for(param)
                key_type, length = KeyType.EC, None
            else:
                key_type, length = KeyType.RSA, param
            try:
                pub, priv = self._session.generate_keypair(
                    key_type, length, store=True, label=label, id=key_id,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY
                    | ((MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT) if dual else 0),
                    public_template=public, private_template=private)
            except PKCS11Error as exc:
                raise self._fail("C_GenerateKeyPair", exc) from exc
            try:
                guarded = (priv[Attribute.SENSITIVE] and priv[Attribute.ALWAYS_SENSITIVE]
                           and not priv[Attribute.EXTRACTABLE] and priv[Attribute.NEVER_EXTRACTABLE])
                if not guarded:
                    pub.destroy()
                    priv.destroy()
                    raise HsmError("key", f"token {self.token_label!r} did not keep key {label!r} sensitive "
                                          "and non-extractable; the key was destroyed")
                result = self._key_object(label, priv, pub)
            except PKCS11Error as exc:
                raise self._fail("C_GetAttributeValue", exc) from exc
            self._handles[label] = priv
            return result

    def check_keygen(self, spec: str) -> None:
        """HsmError("key") naming what is missing unless the token can make ``spec`` keys."""
        if spec not in keys.KEY_SPECS:
            raise HsmError("key", f"unsupported key spec {spec!r}; use one of {', '.join(keys.KEY_SPECS)}")
        with self._locked():
            self._ensure()
            self._check_keygen(spec)

    def can_generate(self, spec: str) -> bool:
        """Whether the token offers the key pair generation mechanism and size for ``spec``."""
        try:
            self.check_keygen(spec)
        except HsmError as exc:
            if exc.reason == "key":
                return False
            raise
        return True

    def mechanisms(self) -> list[str]:
        """CKM_* names of the mechanisms the token's slot offers, sorted."""
        with self._locked():
            self._ensure()
            return sorted(keys.mechanism_name(m) for m in self._mechanisms)

    def plans(self) -> dict[str, str]:
        """What each signature device-ca makes goes through on this token, and which key types it can make."""
        with self._locked():
            self._ensure()
            mechanisms = self._mechanisms
        return keys.describe_plans(mechanisms) | {
            f"generate {spec}": ("yes" if self.can_generate(spec) else "no") for spec in keys.KEY_SPECS}

    def info(self) -> dict[str, Any]:
        """Module, slot and token description (C_GetInfo-like, C_GetTokenInfo): nothing secret."""
        with self._locked():
            self._ensure()
            rv, token = self._lib.raw.token_info(self._slot_id)
            if rv != CKR_OK or token is None:
                raise self._lost("C_GetTokenInfo", ckr_name(rv))
            lib = self._lib.pkcs11
            return {"module": self.module, "library": f"{lib.manufacturer_id} {lib.library_description} "
                                                      f"{'.'.join(map(str, lib.library_version))}".strip(),
                    "cryptoki": ".".join(map(str, lib.cryptoki_version)),
                    "slot": self._slot_id, "label": token.label,
                    "manufacturer": token.manufacturer, "model": token.model,
                    "slot_description": str(self._slot.slot_description).strip(),
                    "max_sessions": token.max_session_count, "sessions": token.session_count,
                    "pin_length": [token.min_pin_length, token.max_pin_length]}

    def objects(self) -> list[dict[str, Any]]:
        """Every key object the session can see (label, id, class, type, protection flags; never a value)."""
        with self._locked():
            self._ensure()
            try:
                found = []
                for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                    for obj in self._find(object_class, None):
                        entry = {"class": object_class.name.lower(), "label": obj[Attribute.LABEL],
                                 "id": bytes(obj[Attribute.ID]).hex(),
                                 "key_type": KeyType(obj[Attribute.KEY_TYPE]).name}
                        if object_class == ObjectClass.PRIVATE_KEY:
                            for name in ("SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE",
                                         "LOCAL", "SIGN", "DECRYPT"):
                                entry[name.lower()] = bool(obj[getattr(Attribute, name)])
                        found.append(entry)
                return sorted(found, key=lambda e: (e["label"], e["class"]))
            except PKCS11Error as exc:
                raise self._fail("C_GetAttributeValue", exc) from exc

    def find_key(self, label: str) -> Pkcs11PrivateKey | None:
        """The private key labelled ``label``, or None when the token has none."""
        with self._locked():
            self._ensure()
            try:
                found = self._find(ObjectClass.PRIVATE_KEY, label)
                if not found:
                    return None
                if len(found) > 1:
                    raise HsmError("key", f"token {self.token_label!r} holds {len(found)} private keys "
                                          f"labelled {label!r}; labels must be unique")
                public = self._find(ObjectClass.PUBLIC_KEY, label)
                result = self._key_object(label, found[0], public[0] if len(public) == 1 else None)
            except PKCS11Error as exc:
                raise self._fail("C_FindObjects", exc) from exc
            self._handles[label] = found[0]
            return result

    def describe_key(self, label: str) -> dict[str, Any]:
        """The protection attributes of the private key ``label`` (for audits and tests)."""
        names = ("TOKEN", "PRIVATE", "SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE",
                 "LOCAL", "SIGN", "DECRYPT", "UNWRAP", "DERIVE")
        with self._locked():
            self._ensure()
            try:
                found = self._find(ObjectClass.PRIVATE_KEY, label)
                if len(found) != 1:
                    raise HsmError("key", f"no unique private key labelled {label!r} on token {self.token_label!r}")
                key = found[0]
                info: dict[str, Any] = {name.lower(): bool(key[getattr(Attribute, name)]) for name in names}
                info["label"] = key[Attribute.LABEL]
                info["id"] = bytes(key[Attribute.ID]).hex()
                info["key_type"] = KeyType(key[Attribute.KEY_TYPE]).name
                info["public_ids"] = [bytes(obj[Attribute.ID]).hex()
                                      for obj in self._find(ObjectClass.PUBLIC_KEY, label)]
                return info
            except PKCS11Error as exc:
                raise self._fail("C_GetAttributeValue", exc) from exc

    def labels(self) -> list[str]:
        """Labels of the private keys on the token, sorted."""
        with self._locked():
            self._ensure()
            try:
                return sorted(obj[Attribute.LABEL] for obj in self._find(ObjectClass.PRIVATE_KEY, None))
            except PKCS11Error as exc:
                raise self._fail("C_FindObjects", exc) from exc

    def ping(self) -> None:
        """Cheap health check (C_GetSessionInfo + C_GetTokenInfo); HsmError("device") when gone."""
        with self._locked():
            self._ensure()
            raw = self._lib.raw
            rv, info = raw.session_info(self._session.handle)
            if rv != CKR_OK or info is None or not info.logged_in:
                raise self._lost("C_GetSessionInfo", ckr_name(rv) if rv != CKR_OK else "session not logged in")
            rv, _ = raw.token_info(self._slot_id)
            if rv != CKR_OK:
                raise self._lost("C_GetTokenInfo", ckr_name(rv))

    def close(self) -> None:
        """Close the session (which ends the login). A Token inherited over fork is only forgotten."""
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            # The session belongs to the parent process; touching it from here is undefined.
            self._session, self._lib, self._owner_pid, self._broken = None, None, None, None
            self._handles = {}
            return
        with self._lock():
            self._drop_session()
            self._owner_pid = None
            self._broken = None

    # -- used by the key objects --------------------------------------------------------

    def _sign(self, label: str, plan: Callable[[frozenset[int]], tuple[Any, Any, bytes]]) -> bytes:
        """Sign with the mechanism ``plan`` picks from the token's mechanism list: (mechanism, parameter, data)."""
        with self._locked():
            self._ensure()
            mechanism, param, data = plan(self._mechanisms)
            handle = self._handles.get(label)
            try:
                if handle is None:
                    found = self._find(ObjectClass.PRIVATE_KEY, label)
                    if len(found) != 1:
                        raise HsmError("key", f"no unique private key labelled {label!r} on token "
                                              f"{self.token_label!r}")
                    handle = self._handles[label] = found[0]
                return handle.sign(data, mechanism=mechanism, mechanism_param=param)
            except PKCS11Error as exc:
                raise self._fail("C_Sign", exc) from exc

    # -- internals (call with the lock held) --------------------------------------------

    def _lock(self) -> threading.Lock:
        pid = os.getpid()
        if self._lock_pid != pid:
            self._lock_obj, self._lock_pid = call_lock(self.module), pid
        return self._lock_obj

    def _locked(self) -> threading.Lock:
        # The PID check comes before the lock: an inherited lock may be held by a parent thread.
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            raise HsmError("fork", FORK_MESSAGE)
        return self._lock()

    def _ensure(self) -> None:
        """Make sure there is a logged-in session of the current library generation."""
        if self._owner_pid is None:
            self._connect(first=True)
            return
        if self._session is not None and self._lib is not None and self._lib.generation == self._generation:
            return
        if self._session is not None:  # the library was re-initialised: the handle is dead already
            self._drop_session(close=False)
        if self._broken and time.monotonic() < self._last_attempt + self.retry_interval:
            raise HsmError("device", f"token {self.token_label!r} unavailable ({self._broken}); retrying shortly")
        try:
            try:
                self._connect(first=False)
            except HsmError as exc:
                if exc.reason != "device":
                    raise
                # The module's own connection may be what broke (tpm2-pkcs11's TPM connection through
                # tpm2-abrmd, openCryptoki's to pkcsslotd): only C_Finalize + C_Initialize renews it.
                # Every session of this process on the module ends; other Tokens see the new generation.
                load(self.module).reinitialize()
                self._connect(first=False)
        except HsmError as exc:
            self._broken = exc.message
            self._last_attempt = time.monotonic()
            raise
        self._broken = None

    def _connect(self, first: bool) -> None:
        lib = load(self.module)
        token = self._find_token(lib, first)
        try:
            session = token.open(rw=True)  # no PIN here: python-pkcs11 leaks the session on a failed login
        except PKCS11Error as exc:
            name = pkcs11_error_name(exc)
            # CKR_SESSION_COUNT: every process of device-ca holds one session; the token allows no more.
            hint = ("; the token's session limit is reached: fewer processes (workers) or a token allowing more"
                    if name == "SessionCount" else "")
            raise HsmError("device", f"C_OpenSession on token {self.token_label!r} failed ({name}){hint}") from exc
        rv = lib.raw.login_user(session.handle, self._config.pin)
        if rv not in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
            try:
                session.close()
            except PKCS11Error:
                pass
            if rv in PIN_FAILURES:
                raise HsmError("pin", f"login to token {self.token_label!r} refused: {ckr_name(rv)} "
                                      "(wrong, locked or uninitialised user PIN)")
            raise HsmError("device", f"login to token {self.token_label!r} failed: {ckr_name(rv)}")
        try:
            mechanisms = frozenset(int(m) for m in token.slot.get_mechanisms())
        except PKCS11Error as exc:
            try:
                session.close()
            except PKCS11Error:
                pass
            raise HsmError("device", f"C_GetMechanismList of token {self.token_label!r} failed "
                                     f"({pkcs11_error_name(exc)})") from exc
        self._lib, self._session, self._slot_id = lib, session, token.slot.slot_id
        self._slot, self._mechanisms = token.slot, mechanisms
        self._generation, self._handles = lib.generation, {}
        self._owner_pid = os.getpid()

    def _find_token(self, lib: Library, first: bool) -> Any:
        labels, matches, error = self._scan(lib)
        for delay in (0.0, 0.05, 0.2, 0.5):
            if matches:
                break
            # SoftHSM reads its token directory in C_Initialize only: a token created (or
            # restored) after the module was loaded needs a re-initialisation to be seen.
            # Other Tokens of this process notice the new generation and reopen silently.
            # While another process rewrites a token file (SoftHSM does on login), the token
            # can look absent for a moment: a few short retries before giving up.
            time.sleep(delay)
            lib.reinitialize()
            labels, matches, error = self._scan(lib)
        if len(matches) > 1:
            raise HsmError("token", f"{len(matches)} tokens are labelled {self.token_label!r}")
        if matches:
            return matches[0]
        if not first:
            raise HsmError("device", f"token {self.token_label!r} is not available ({error or 'not present'})")
        if error:
            raise HsmError("token", f"cannot list the tokens of {self.module} ({error})")
        available = ", ".join(repr(label) for label in labels) or "none"
        raise HsmError("token", f"no token labelled {self.token_label!r} in {self.module}; available: {available}")

    def _scan(self, lib: Library) -> tuple[list[str], list[Any], str | None]:
        labels: list[str] = []
        matches: list[Any] = []
        try:
            for slot in lib.pkcs11.get_slots(token_present=True):
                try:
                    token = slot.get_token()
                except PKCS11Error:
                    continue  # CKR_TOKEN_NOT_PRESENT / NOT_RECOGNIZED: an empty or odd slot
                if not token.flags & TokenFlag.TOKEN_INITIALIZED:
                    continue
                labels.append(token.label)
                if token.label == self.token_label:
                    matches.append(token)
        except PKCS11Error as exc:
            return labels, [], pkcs11_error_name(exc)
        return labels, matches, None

    def _check_keygen(self, spec: str) -> None:
        """HsmError("key") unless the token offers the generation mechanism and key size of ``spec``."""
        kind, param = keys.KEY_SPECS[spec]
        mechanism = keys.KEYGEN_MECHANISMS[kind]
        if not keys.offered(self._mechanisms, mechanism):
            raise HsmError("key", f"token {self.token_label!r} cannot make {spec} keys: it offers no "
                                  f"{keys.mechanism_name(mechanism)}")
        bits = param if kind == "rsa" else param.key_size
        try:
            info = self._slot.get_mechanism_info(mechanism)
        except PKCS11Error:
            return  # no size range reported; C_GenerateKeyPair decides
        low, high = int(info.min_key_length), int(info.max_key_length)
        if kind == "ec" and high < 160:
            return  # some modules give EC sizes in bytes (the v2.40 spec is ambiguous): not a bit range
        if high and not low <= bits <= high:
            raise HsmError("key", f"token {self.token_label!r} cannot make {spec} keys: "
                                  f"{keys.mechanism_name(mechanism)} supports {low} to {high} bits")

    def _find(self, object_class: ObjectClass | None, label: str | None) -> list[Any]:
        template: dict[Attribute, Any] = {}
        if object_class is not None:
            template[Attribute.CLASS] = object_class
        if label is not None:
            template[Attribute.LABEL] = label
        return list(self._session.get_objects(template))

    def _key_object(self, label: str, private: Any, public: Any) -> Pkcs11PrivateKey:
        key_type = private[Attribute.KEY_TYPE]
        if key_type == KeyType.EC:
            if public is None:
                raise HsmError("key", f"EC key {label!r} has no public key object on the token")
            point = keys.ec_public_key(public[Attribute.EC_PARAMS], public[Attribute.EC_POINT])
            return Pkcs11EcPrivateKey(self, label, point)
        if key_type == KeyType.RSA:
            source = public if public is not None else private  # modulus and exponent are public
            numbers = keys.rsa_public_key(source[Attribute.MODULUS], source[Attribute.PUBLIC_EXPONENT])
            return Pkcs11RsaPrivateKey(self, label, numbers)
        raise HsmError("key", f"key {label!r} has unsupported type {getattr(key_type, 'name', key_type)}")

    def _drop_session(self, close: bool = True) -> None:
        session, self._session, self._handles = self._session, None, {}
        if session is None:
            return
        if close and self._lib is not None and self._lib.generation == self._generation:
            try:
                session.close()
            except PKCS11Error:
                pass  # the handle is already invalid, or the token is gone

    def _fail(self, operation: str, exc: PKCS11Error) -> HsmError:
        name = pkcs11_error_name(exc)
        if loses_session(exc):
            return self._lost(operation, name)
        return HsmError("key", f"token {self.token_label!r}: {operation} failed ({name})")

    def _lost(self, operation: str, name: str) -> HsmError:
        self._drop_session()
        self._broken = f"{operation}: {name}"
        self._last_attempt = float("-inf")  # the next call tries to reconnect at once
        return HsmError("device", f"token {self.token_label!r}: {operation} failed ({name}); "
                                  "the session will be reopened on the next call")


def open_token(config: TokenConfig) -> Token:
    """Token(config), opened."""
    token = Token(config)
    token.open()
    return token
