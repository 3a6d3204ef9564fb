"""Development and test tokens on three PKCS#11 implementations, started and stopped from one place.

* ``softhsm``: SoftHSM2 (``libsofthsm2.so``); tokens in a directory named by SOFTHSM2_CONF.
* ``opencryptoki``: openCryptoki's software token ``swtok`` (``PKCS11_API.so``), served by the
  ``pkcsslotd`` daemon. Its paths are compiled in (/etc/opencryptoki, /var/lib/opencryptoki), so
  there is one soft token per machine and setting it up needs root or the ``pkcs11`` group.
* ``tpm``: tpm2-pkcs11 (``libtpm2_pkcs11.so``) on the swtpm TPM 2.0 simulator, reached through the
  tpm2-abrmd access broker on a private D-Bus session bus (every device-ca process opens its own
  TPM connection; swtpm serves one connection at a time, the broker multiplexes them). On a real
  gateway the TCTI is ``device:/dev/tpmrm0`` (the kernel's resource manager) instead.

Every token gets its PINs through PKCS#11 itself (C_InitToken, C_Login as SO, C_SetPIN, C_InitPIN,
PKCS#11 v2.40 Base §5.5-§5.6), never on a command line: softhsm2-util gets them through a
pseudo-terminal (``hsm.softhsm``). The PINs are drawn at random into files of mode 0600, at most as
long as the token accepts (openCryptoki: 4 to 8 characters).

    python3 -m hsm.provision start --kind tpm --dir var/hsm/tpm --label device-ca
    . var/hsm/tpm/env            # DEVICE_CA_HSM_MODULE, _TOKEN, _PIN_FILE and the module's own settings
    python3 -m hsm.provision stop --dir var/hsm/tpm

``stop`` ends only the daemons ``start`` started (their PIDs are in DIR/pids).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hsm._cryptoki import CKU_SO, Cryptoki
from hsm.config import random_pin
from hsm.errors import CKR_OK, ckr_name

MODULES = {
    "softhsm": "/usr/lib/softhsm/libsofthsm2.so",
    "opencryptoki": "/usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so",
    "tpm": "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
}
PACKAGES = {
    "softhsm": "softhsm2",
    "opencryptoki": "opencryptoki",
    "tpm": "swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1 libtpm2-pkcs11-tools dbus",
}
OPENCRYPTOKI_DEFAULT_SO_PIN = "87654321"  # what a fresh swtok expects (the openCryptoki documentation)
OPENCRYPTOKI_SOFT_MODEL = "IBM SoftTok"
OPENCRYPTOKI_TOKEN_DIR = Path("/var/lib/opencryptoki/swtok")
SCRATCH_LOCK = "/var/lock/device-ca-opencryptoki.lock"  # one scratch soft token per machine at a time
CKF_TOKEN_INITIALIZED = 0x400
CKF_SO_PIN_TO_BE_CHANGED = 0x800000


class ProvisionError(RuntimeError):
    pass


def free_port_pair() -> int:
    """A free loopback port P with P+1 free too (the swtpm TCTI expects the control port at P+1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise ProvisionError("no two adjacent free loopback ports for swtpm")


class Provisioner:
    """One token of ``kind`` whose daemons, state and PINs live in ``directory``."""

    def __init__(self, kind: str, directory: Path, label: str = "device-ca"):
        if kind not in MODULES:
            raise ProvisionError(f"unknown token kind {kind!r}; use one of {', '.join(MODULES)}")
        self.kind = kind
        self.directory = Path(directory).resolve()
        self.label = label
        self.module = MODULES[kind]
        self.pin_file = self.directory / "pin"
        self.so_pin_file = self.directory / "so-pin"

    # -- what processes need -------------------------------------------------------------

    def module_env(self) -> dict[str, str]:
        """The module's own settings (no PIN): what every process using the token needs."""
        d = self.directory
        if self.kind == "softhsm":
            return {"SOFTHSM2_CONF": str(d / "softhsm2.conf")}
        if self.kind == "tpm":
            return {"TPM2_PKCS11_STORE": str(d / "store"), "TPM2_PKCS11_TCTI": "tabrmd:bus_type=session",
                    "DBUS_SESSION_BUS_ADDRESS": f"unix:path={d / 'bus'}", "TPM2_PKCS11_LOG_LEVEL": "0",
                    "TPM2TOOLS_TCTI": "tabrmd:bus_type=session"}
        return {}

    def env(self) -> dict[str, str]:
        """module_env() plus device-ca's DEVICE_CA_HSM_MODULE, _TOKEN and _PIN_FILE."""
        return {**self.module_env(), "DEVICE_CA_HSM_MODULE": self.module, "DEVICE_CA_HSM_TOKEN": self.label,
                "DEVICE_CA_HSM_PIN_FILE": str(self.pin_file)}

    # -- start / stop -----------------------------------------------------------------

    def start(self) -> dict[str, str]:
        """Start the daemons (if needed) and initialise the token (if it has no such label yet)."""
        if not os.path.isfile(self.module):
            raise ProvisionError(f"{self.module} is missing: apt-get install {PACKAGES[self.kind]}")
        self.directory.mkdir(parents=True, exist_ok=True)
        getattr(self, f"_start_{self.kind}")()
        (self.directory / "env").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items()))
        return self.env()

    def stop(self) -> None:
        """End what start() started (newest first); the token's state stays in the directory."""
        pids = self._pids()
        for name, pid in reversed(list(pids.items())):
            _terminate(pid, name)
        (self.directory / "pids").unlink(missing_ok=True)

    def _pids(self) -> dict[str, int]:
        path = self.directory / "pids"
        return json.loads(path.read_text()) if path.exists() else {}

    def _started(self, name: str, pid: int) -> None:
        pids = self._pids()
        pids[name] = pid
        (self.directory / "pids").write_text(json.dumps(pids))

    # -- SoftHSM ---------------------------------------------------------------------

    def _start_softhsm(self) -> None:
        from hsm.softhsm import init_token, token_labels, write_config

        write_config(self.directory)
        env = {**os.environ, **self.module_env()}
        if self.label in token_labels(env):
            return
        init_token(self.label, random_pin(self.pin_file, 24), random_pin(self.so_pin_file, 24), env=env)

    # -- openCryptoki ----------------------------------------------------------------

    def _start_opencryptoki(self) -> None:
        for sub in ("/var/lock/opencryptoki", "/var/lock/opencryptoki/swtok", "/var/log/opencryptoki",
                    "/var/lib/opencryptoki/swtok/TOK_OBJ"):
            os.makedirs(sub, exist_ok=True)
            shutil.chown(sub, group="pkcs11")
            os.chmod(sub, 0o770)
        if _pgrep("pkcsslotd") is None:
            if shutil.which("pkcsslotd") is None and not os.path.exists("/usr/sbin/pkcsslotd"):
                raise ProvisionError(f"pkcsslotd is missing: apt-get install {PACKAGES['opencryptoki']}")
            subprocess.run(["/usr/sbin/pkcsslotd"], check=True, timeout=30)  # forks into the background
            pid = _wait_for(lambda: _pgrep("pkcsslotd"), 10, "pkcsslotd did not start")
            self._started("pkcsslotd", pid)
        # Until the new daemon has made its shared memory, C_Initialize answers CKR_HOST_MEMORY.
        for attempt in range(20):
            try:
                self._init_by_pkcs11(soft_token_only=True, quiet=attempt < 19)
                return
            except ProvisionError:
                if attempt == 19:
                    raise
                time.sleep(0.25)

    def reset_opencryptoki(self) -> None:
        """Wipe the machine's openCryptoki soft token (objects, PINs, master keys); pkcsslotd must be stopped."""
        if _pgrep("pkcsslotd") is not None:
            raise ProvisionError("stop pkcsslotd before resetting the soft token")
        base = OPENCRYPTOKI_TOKEN_DIR
        for name in ("NVTOK.DAT", "MK_USER", "MK_SO"):
            (base / name).unlink(missing_ok=True)
        for obj in (base / "TOK_OBJ").glob("*"):
            obj.unlink()
        for path in (self.pin_file, self.so_pin_file):
            path.unlink(missing_ok=True)
        for shm in Path("/dev/shm").glob("*opencryptoki*"):
            shm.unlink(missing_ok=True)

    # -- TPM (swtpm + tpm2-abrmd + tpm2-pkcs11) -------------------------------------------

    def _start_tpm(self) -> None:
        d = self.directory
        for tool in ("swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_ptool"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                raise ProvisionError(f"{tool} is missing: apt-get install {PACKAGES['tpm']}")
        (d / "state").mkdir(exist_ok=True)
        (d / "store").mkdir(exist_ok=True)
        env = {**os.environ, **self.module_env()}
        pids = self._pids()
        if not _alive(pids.get("dbus-daemon")):
            (d / "bus").unlink(missing_ok=True)
            out = subprocess.run(["dbus-daemon", "--session", "--fork", "--print-pid=1", "--nopidfile",
                                  f"--address=unix:path={d / 'bus'}"], capture_output=True, text=True,
                                 check=True, timeout=30)
            self._started("dbus-daemon", int(out.stdout.split()[0]))
        if not _alive(pids.get("swtpm")):
            port = free_port_pair()
            ctrl = port + 1
            (d / "swtpm.pid").unlink(missing_ok=True)
            subprocess.run(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={d / 'state'}",
                            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                            "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                            "--flags", "not-need-init,startup-clear", "--daemon",
                            "--pid", f"file={d / 'swtpm.pid'}", "--log", f"file={d / 'swtpm.log'}"],
                           check=True, timeout=30)
            pid = _wait_for(lambda: _read_pid(d / "swtpm.pid"), 10, "swtpm did not start")
            self._started("swtpm", pid)
            (d / "swtpm.port").write_text(str(port))
        if not _alive(self._pids().get("tpm2-abrmd")):
            port = (d / "swtpm.port").read_text().strip()
            log = open(d / "abrmd.log", "ab")
            proc = subprocess.Popen(["tpm2-abrmd", "--session", "--allow-root",
                                     f"--tcti=swtpm:host=127.0.0.1,port={port}"],
                                    env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            log.close()
            self._started("tpm2-abrmd", proc.pid)
            _wait_for(lambda: subprocess.run(["tpm2_getcap", "properties-fixed"], env=env, capture_output=True,
                                             timeout=30).returncode == 0 or None, 20,
                      "tpm2-abrmd did not come up (see abrmd.log)")
        if not (d / "store" / "tpm2_pkcs11.sqlite3").exists():
            # The store's primary key: tpm2_ptool takes no PIN for this step.
            out = subprocess.run(["tpm2_ptool", "init", f"--path={d / 'store'}"], env=env, capture_output=True,
                                 text=True, timeout=120)
            if out.returncode != 0:
                raise ProvisionError(f"tpm2_ptool init failed: {(out.stderr or out.stdout).strip()[-300:]}")
        self._init_by_pkcs11(soft_token_only=False)

    # -- token initialisation through PKCS#11 -----------------------------------------

    def _init_by_pkcs11(self, soft_token_only: bool, quiet: bool = False) -> None:
        """C_InitToken (SO PIN, label) on a free slot, C_Login as SO, C_InitPIN; in a child process,
        so that this process never holds the module initialised (a later fork stays clean) and its
        environment is not changed (the module's settings are set in the child only)."""
        pid = os.fork()
        if pid == 0:
            os.environ.update(self.module_env())
            code = 1
            try:
                self._init_in_this_process(soft_token_only)
                code = 0
            except ProvisionError as exc:
                if not quiet:
                    print(f"hsm.provision: {exc}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - reported, then the child exits
                print(f"hsm.provision: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise ProvisionError(f"could not initialise token {self.label!r} on {self.kind} (see above)")

    def _init_in_this_process(self, soft_token_only: bool) -> None:
        raw = Cryptoki.load(self.module)
        rv = raw.initialize()
        if rv != CKR_OK:
            raise ProvisionError(f"C_Initialize of {self.module} failed: {ckr_name(rv)}")
        rv, slots = raw.slot_list(token_present=True)
        if rv != CKR_OK:
            raise ProvisionError(f"C_GetSlotList failed: {ckr_name(rv)}")
        infos = {slot: raw.token_info(slot)[1] for slot in slots}
        if any(info is not None and info.label == self.label for info in infos.values()):
            return  # already initialised: keep its keys
        if soft_token_only:
            candidates = [s for s, i in infos.items() if i is not None and i.model == OPENCRYPTOKI_SOFT_MODEL]
        else:
            candidates = [s for s, i in infos.items() if i is not None and not i.flags & CKF_TOKEN_INITIALIZED]
        if not candidates:
            raise ProvisionError(f"no free slot for token {self.label!r} in {self.module}")
        slot, info = candidates[0], infos[candidates[0]]
        length = min(info.max_pin_length or 24, 24)
        pin, so_pin = random_pin(self.pin_file, length), random_pin(self.so_pin_file, length)
        if soft_token_only and info.flags & CKF_SO_PIN_TO_BE_CHANGED:
            current_so = OPENCRYPTOKI_DEFAULT_SO_PIN  # a fresh openCryptoki soft token
        else:
            current_so = so_pin  # a free slot, or the soft token re-initialised (which wipes its objects)
        rv = raw.init_token(slot, current_so, self.label)
        if rv != CKR_OK:
            raise ProvisionError(f"C_InitToken on slot {slot} failed: {ckr_name(rv)}"
                                 + (" (the soft token belongs to someone else: give its SO PIN in "
                                    f"{self.so_pin_file} or `reset` it)" if soft_token_only else ""))
        rv, session = raw.open_session(slot)
        if rv != CKR_OK:
            raise ProvisionError(f"C_OpenSession on slot {slot} failed: {ckr_name(rv)}")
        steps = [("C_Login(SO)", lambda: raw.login(session, CKU_SO, current_so))]
        if current_so != so_pin:
            steps.append(("C_SetPIN(SO)", lambda: raw.set_pin(session, current_so, so_pin)))
        steps += [("C_InitPIN", lambda: raw.init_pin(session, pin)), ("C_Logout", lambda: raw.logout(session))]
        for name, step in steps:
            rv = step()
            if rv != CKR_OK:
                raise ProvisionError(f"{name} on token {self.label!r} failed: {ckr_name(rv)}")
        raw.close_session(session)
        raw.finalize()


@contextlib.contextmanager
def scratch(kind: str, directory: Path, label: str = "device-ca", wait: float = 600) -> Iterator[Provisioner]:
    """A fresh token of ``kind`` for tests and benchmarks, with its daemons; everything stopped after.

    openCryptoki has one soft token per machine: it is taken under a machine-wide lock (``wait``
    seconds at most), its files are set aside, the token is made afresh, and afterwards pkcsslotd is
    stopped and the files are put back as they were. A pkcsslotd that is already running belongs to
    someone else: refused rather than disturbed.
    """
    provisioner = Provisioner(kind, directory, label)
    with contextlib.ExitStack() as stack:
        if kind == "opencryptoki":
            stack.enter_context(_machine_lock(wait))
            if _pgrep("pkcsslotd") is not None:
                raise ProvisionError("pkcsslotd is already running: openCryptoki's soft token is in use; "
                                     "stop it (or `python3 -m hsm.provision stop`) first")
            backup = Path(directory) / "swtok-before"
            if OPENCRYPTOKI_TOKEN_DIR.exists() and not backup.exists():
                shutil.copytree(OPENCRYPTOKI_TOKEN_DIR, backup, symlinks=True)
            stack.callback(_restore_soft_token, backup)
            provisioner.reset_opencryptoki()
        stack.callback(provisioner.stop)
        provisioner.start()
        yield provisioner


def _restore_soft_token(backup: Path) -> None:
    if not backup.exists():
        return
    shutil.rmtree(OPENCRYPTOKI_TOKEN_DIR, ignore_errors=True)
    shutil.copytree(backup, OPENCRYPTOKI_TOKEN_DIR, symlinks=True)
    for path in [OPENCRYPTOKI_TOKEN_DIR, *OPENCRYPTOKI_TOKEN_DIR.rglob("*")]:
        shutil.chown(path, group="pkcs11")  # copytree keeps the modes, not the group
    for shm in Path("/dev/shm").glob("*opencryptoki*"):
        shm.unlink(missing_ok=True)


@contextlib.contextmanager
def _machine_lock(wait: float) -> Iterator[None]:
    fd = os.open(SCRATCH_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ProvisionError(f"openCryptoki's soft token stayed in use (lock {SCRATCH_LOCK})") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def _pgrep(name: str) -> int | None:
    """A running process called ``name`` (not a zombie: see _zombie), or None."""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    running = [int(pid) for pid in out.stdout.split() if not _zombie(int(pid))] if out.returncode == 0 else []
    return running[0] if running else None


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and only waits to be reaped (state Z). A daemon that forked into the
    background is reaped by PID 1; where PID 1 does not reap (a container without an init), a
    stopped pkcsslotd stays a zombie for good and must not count as running: else every later
    scratch("opencryptoki") would refuse, and each stop would wait out _terminate's 10 s."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].startswith(("Z", "X"))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _wait_for(probe, seconds: float, message: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise ProvisionError(message)


def _terminate(pid: int, name: str) -> None:
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (tpm2-abrmd); zombies count as ended
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hsm.provision", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "reset"))
    parser.add_argument("--kind", choices=sorted(MODULES), default="softhsm")
    parser.add_argument("--dir", type=Path, required=True, help="daemons' state, PIN files, env file")
    parser.add_argument("--label", default="device-ca")
    args = parser.parse_args(argv)
    provisioner = Provisioner(args.kind, args.dir, args.label)
    try:
        if args.action == "start":
            provisioner.start()
            print(f"token {args.label!r} ready on {args.kind}; settings: . {provisioner.directory / 'env'}")
        elif args.action == "stop":
            provisioner.stop()
            print(f"stopped what `start` started for {args.kind} in {provisioner.directory}")
        else:
            provisioner.reset_opencryptoki()
            print("openCryptoki soft token wiped")
    except (ProvisionError, subprocess.CalledProcessError, OSError) as exc:
        print(f"hsm.provision: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
