"""A TPM 2.0 simulator (swtpm) on free loopback ports, for tests that keep keys in a TPM.

``Swtpm().start(state_dir)`` starts one in its own process group and waits until it answers;
``tcti`` is the direct ``swtpm:`` TCTI string (one client at a time, no resource manager), ``env``
the variables that point tpm2-tools and the tpm2 OpenSSL provider at it. ``stop()`` kills the
group and may be called any number of times.

``Swtpm().start(state_dir, unix_socket=True)`` listens on a unix socket instead (``socket_path``, the
control channel beside it as ``socket_path.ctrl``, which the ``swtpm:path=`` TCTI expects): for
go-tpm (the Go estclient), which talks to a TPM device or a unix socket only.

``Swtpm().start(state_dir, resource_manager=True)`` puts tpm2-abrmd, on a private D-Bus bus of its
own (a unix socket in the state directory), between the clients and the simulator: ``tcti`` is
then the ``tabrmd:`` one. That is what a real device has in the kernel (/dev/tpmrm0): a TPM has
only 3 slots for loaded objects, and without a resource manager swapping them out the tpm2 OpenSSL
provider runs out of them in a TLS handshake (its key, its hash sequences and their copies).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from hsm.provision import free_port_pair as _free_port_pair  # P with P+1 free: swtpm commands and control

APT = "apt-get install -y swtpm swtpm-tools tpm2-tools tpm2-openssl tpm2-abrmd libtss2-tcti-tabrmd0 dbus"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>
"""


class Swtpm:
    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.bus: subprocess.Popen | None = None
        self.abrmd: subprocess.Popen | None = None
        self.bus_address: str | None = None
        self.socket_path: Path | None = None
        self.port: int | None = None
        self.ctrl_port: int | None = None
        self.state_dir: Path | None = None

    @staticmethod
    def missing_tools() -> list[str]:
        tools = ("swtpm", "tpm2_getcap", "openssl", "tpm2-abrmd", "dbus-daemon")
        missing = [tool for tool in tools if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
        if not Path("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so").exists() and not list(
                Path("/usr/lib").glob("*/ossl-modules/tpm2.so")):
            missing.append("tpm2-openssl")
        return missing

    @property
    def direct_tcti(self) -> str:
        if self.socket_path is not None:
            return f"swtpm:path={self.socket_path}"
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def tcti(self) -> str:
        if self.abrmd is not None:
            return f"tabrmd:bus_type=session,bus_name={self._bus_name}"
        return self.direct_tcti

    @property
    def _bus_name(self) -> str:
        return f"com.intel.tss2.Tabrmd.p{self.port or os.getpid()}"

    @property
    def env(self) -> dict[str, str]:
        """For tpm2-tools (TPM2TOOLS_TCTI) and the tpm2 provider of OpenSSL 3 (TPM2OPENSSL_TCTI)."""
        env = {"TPM2TOOLS_TCTI": self.tcti, "TPM2OPENSSL_TCTI": self.tcti}
        if self.bus_address:
            env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        return env

    def start(self, state_dir: Path, timeout: float = 20, resource_manager: bool = False,
              unix_socket: bool = False) -> "Swtpm":
        """A fresh TPM (new state: new seeds, so keys of any other TPM are useless here), started
        and cleared; listens on 127.0.0.1 (or a unix socket) only. With ``resource_manager``,
        tpm2-abrmd in front."""
        if self.process is not None:
            raise RuntimeError("this swtpm is already started")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        if unix_socket:
            self.socket_path = state_dir / "tpm.sock"
            listen = ["--server", f"type=unixio,path={self.socket_path}",
                      "--ctrl", f"type=unixio,path={self.socket_path}.ctrl"]
        else:
            self.port = _free_port_pair()
            self.ctrl_port = self.port + 1
            listen = ["--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                      "--ctrl", f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1"]
        # not --daemon: the Popen is the swtpm process, in its own session, so stop() can kill it
        self.process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state_dir}", *listen,
             "--flags", "not-need-init,startup-clear", "--pid", f"file={state_dir / 'swtpm.pid'}",
             "--log", f"file={state_dir / 'swtpm.log'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            self._wait(timeout)
            if resource_manager:
                self._start_abrmd(state_dir, timeout)
                self._wait(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"swtpm exited {self.process.returncode}: {self.process.stderr.read().decode()}")
            probe = subprocess.run(["tpm2_getcap", "properties-fixed"], env={**os.environ, **self.env},
                                   capture_output=True, timeout=10)
            if probe.returncode == 0 and b"TPM2_PT_FAMILY_INDICATOR" in probe.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"swtpm at {self.direct_tcti} does not answer: {probe.stderr.decode()[-1000:]}")
            time.sleep(0.2)

    def _start_abrmd(self, state_dir: Path, timeout: float) -> None:
        socket_path = state_dir / "bus"
        config = state_dir / "dbus.conf"
        config.write_text(_BUS_CONFIG.format(socket=socket_path))
        self.bus = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not socket_path.exists():
            if self.bus.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dbus-daemon did not start (exit {self.bus.poll()})")
            time.sleep(0.05)
        self.bus_address = f"unix:path={socket_path}"
        abrmd = shutil.which("tpm2-abrmd") or "/usr/sbin/tpm2-abrmd"
        with (state_dir / "abrmd.log").open("wb") as log:
            self.abrmd = subprocess.Popen(
                [abrmd, "--session", "--allow-root", f"--dbus-name={self._bus_name}", f"--tcti={self.direct_tcti}"],
                env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.bus_address}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM to each process group (abrmd, its bus, swtpm), SIGKILL if one has not exited 5 s later."""
        with contextlib.ExitStack() as stack:
            for name in ("process", "bus", "abrmd"):       # callbacks run last first: abrmd, bus, swtpm
                process = getattr(self, name)
                setattr(self, name, None)
                if process is not None:
                    stack.callback(_kill_group, process)
        self.bus_address = None


def _kill_group(process: subprocess.Popen) -> None:
    """The process was started with start_new_session: its group id is its pid."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if process.stderr:
        process.stderr.close()
