"""A throw-away PostgreSQL 15 primary with a synchronous streaming standby, for failover tests.

Both servers run on free 127.0.0.1 ports from their own temporary directories, with trust
authentication on 127.0.0.1 only (a test cluster). PostgreSQL refuses to run as root, so when
the tests run as root (CI) every server command runs as the ``postgres`` user.

The standby is a ``pg_basebackup -R`` copy of the primary (``standby.signal`` + ``primary_conninfo``).
Replication is synchronous: the primary acknowledges a commit only once the standby has it, so a
certificate that device-ca answered with cannot be missing from the standby after a failover.
``synchronous_standby_names`` is given on the primary's command line and not in postgresql.conf:
the base backup copies postgresql.conf, and a promoted standby that inherited the setting would
make every commit wait for a standby it does not have.

    with pg_cluster() as cluster:
        url = cluster.url              # both hosts, target_session_attrs=read-write
        cluster.kill_primary()         # SIGKILL to the postmaster and all its processes
        cluster.promote()              # the standby is the new primary, accepting writes

Leaving the block stops both servers and removes their directories, also when the test failed.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from integration.server_harness import free_port
from integration.tls_tools import children

BIN = Path(os.environ.get("DEVICE_CA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "postgres"
DATABASE = "devca"
STANDBY_NAME = "standby"
HBA = """\
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""
# Common to both servers (the base backup copies it). fsync is off: the tests kill processes, not
# the machine, so the page cache survives every failure they provoke.
CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = off
max_wal_senders = 4
wal_keep_size = '64MB'
log_min_messages = warning
"""


def _as_postgres(*cmd: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
    proc = subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


@dataclass
class Node:
    name: str
    data: Path
    port: int
    options: str
    killed: bool = False

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    def conninfo(self, dbname: str = DATABASE, **extra: str) -> str:
        return " ".join(f"{k}={v}" for k, v in {"host": "127.0.0.1", "port": self.port, "user": USER,
                                                   "dbname": dbname, "connect_timeout": 5, **extra}.items())

    def start(self) -> None:
        _as_postgres(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", self.options, "start")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None


@dataclass
class PgCluster:
    root: Path
    primary: Node
    standby: Node
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL naming both servers; libpq (psycopg) takes the first that accepts writes."""
        hosts = "&".join(f"host=127.0.0.1:{n.port}" for n in (self.primary, self.standby))
        return f"postgresql+psycopg://{USER}@/{DATABASE}?{hosts}&target_session_attrs=read-write"

    def connect(self, node: Node | None = None, **kwargs) -> psycopg.Connection:
        """A connection to ``node`` (default: whichever server is the primary now)."""
        nodes = [node] if node else [n for n in (self.primary, self.standby) if not n.killed]
        last: Exception | None = None
        for n in nodes:
            try:
                conn = psycopg.connect(n.conninfo(), autocommit=True, **kwargs)
            except psycopg.OperationalError as exc:
                last = exc
                continue
            if node is not None or not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return conn
            conn.close()
        raise RuntimeError(f"no primary reachable: {last}")

    def kill_primary(self) -> None:
        """The primary dies at once, as with a crashed machine: SIGKILL to its postmaster and every
        backend, WAL sender and background process (no shutdown checkpoint, no goodbye to clients)."""
        node = self.primary
        pid = node.postmaster_pid()
        if pid is None:
            raise RuntimeError("the primary is not running")
        os.kill(pid, signal.SIGSTOP)           # no new backend forked between the listing and the kill
        below = children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _wait_gone([pid, *below], 10)
        node.killed = True

    def promote(self, timeout: float = 60) -> None:
        """The standby leaves recovery and accepts writes; from now on it is ``primary``."""
        _as_postgres(BIN / "pg_ctl", "-D", self.standby.data, "-w", "-t", str(int(timeout)), "promote")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.standby.conninfo(target_session_attrs="read-write"),
                                     autocommit=True) as conn:
                    conn.execute("SELECT txid_current()")           # assigns a transaction id: a write
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.primary, self.standby = self.standby, self.primary

    def stop(self) -> None:
        """Every server down (immediate stop; SIGKILL if that fails) and the directory removed."""
        try:
            for node in self.nodes:
                pid = node.postmaster_pid()
                if pid is None or node.killed:
                    continue
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    _as_postgres(BIN / "pg_ctl", "-D", node.data, "-m", "immediate", "-w", "-t", "30", "stop",
                                 timeout=40)
                if _alive(pid):
                    below = children(pid)
                    for p in (pid, *below):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                    _wait_gone([pid, *below], 10)
            for node in self.nodes:
                _remove_shared_memory(node.data)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL processes {pids} did not exit")
        time.sleep(0.05)


def _remove_shared_memory(data: Path) -> None:
    """A killed postmaster leaves its System V segment (postmaster.pid line 7: key and id)."""
    try:
        shm_id = (data / "postmaster.pid").read_text().split("\n")[6].split()[1]
    except (FileNotFoundError, IndexError):
        return
    subprocess.run(["ipcrm", "-m", shm_id], capture_output=True)


_LIVE: list[PgCluster] = []


@atexit.register
def _stop_leftovers() -> None:
    """A test run interrupted around a ``with`` block still stops its servers."""
    while _LIVE:
        _LIVE.pop().stop()


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A running primary + synchronous standby; both stopped and removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="device-ca-pgcluster-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, USER, USER)
    sockets = root / "sockets"
    primary_options = f"-c synchronous_standby_names={STANDBY_NAME} -c synchronous_commit=on"
    primary = Node("primary", root / "primary", free_port(), primary_options)
    standby = Node("standby", root / "standby", free_port(), "")
    for node in (primary, standby):
        node.options = f"-c port={node.port} {node.options}".strip()
    cluster = PgCluster(root, primary, standby, nodes=[primary, standby])
    _LIVE.append(cluster)
    try:
        _as_postgres("mkdir", "-m", "0700", sockets)
        _as_postgres(BIN / "initdb", "-D", primary.data, "-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C",
                     "--no-sync", "--no-instructions")
        _write_as_postgres(primary.data / "pg_hba.conf", HBA)
        _write_as_postgres(primary.data / "postgresql.conf",
                           (primary.data / "postgresql.conf").read_text() + CONF.format(sockets=sockets))
        primary.start()
        with psycopg.connect(primary.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("SET synchronous_commit = local")      # no standby to wait for yet
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        _as_postgres(BIN / "pg_basebackup", "-D", standby.data, "-R", "-X", "stream", "-c", "fast", "--no-sync",
                     "-d", primary.conninfo("postgres", application_name=STANDBY_NAME))
        standby.start()
        _wait_synchronous(cluster)
        yield cluster
    finally:
        _LIVE.remove(cluster)
        cluster.stop()


def _write_as_postgres(path: Path, text: str) -> None:
    path.write_text(text)
    if os.geteuid() == 0:
        shutil.chown(path, USER, USER)


def _wait_synchronous(cluster: PgCluster, timeout: float = 60) -> None:
    """Until the primary reports the standby as its synchronous standby, streaming."""
    deadline = time.monotonic() + timeout
    with cluster.connect(cluster.primary) as conn:
        while True:
            row = conn.execute("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                               (STANDBY_NAME,)).fetchone()
            if row == ("streaming", "sync"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby is not a streaming synchronous standby: {row}")
            time.sleep(0.1)
