"""Backup and restore (issue 18, item 4) with the real CLI, SoftHSM, the database under test and
openssl as the OCSP client: back up while serve runs, destroy the state, restore, and go on."""
from __future__ import annotations

import gzip
import io
import json
import secrets
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from integration.cli_harness import ROOT, CaEnv, new_ca_env, openssl, openssl_csr
from hsm.softhsm import init_token

pytestmark = pytest.mark.integration


def _issue(env: CaEnv, directory: Path, device: str, **extra_env) -> tuple[str, Path]:
    csr = openssl_csr(directory, device, f"/O=BuildingCo/OU=door-lock/CN={device}")
    cert = directory / f"{device}.pem"
    done = env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--device-id", device, "--out", str(cert),
                   **extra_env)
    return done.stderr.decode().split("issued serial ")[1].split()[0], cert


def _destroy(env: CaEnv) -> None:
    """The state directory and the database gone; an empty database (and directory) in their place."""
    shutil.rmtree(env.home)
    url = sa.engine.make_url(env.database_url)
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal", ".writelock"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
    else:
        from pg import PG_ADMIN_URL

        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE "{url.database}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
        admin.dispose()
    env.home.mkdir()


def _ocsp(env: CaEnv, server, cert: Path) -> str:
    proc = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(cert), "-url",
                   f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "10")
    assert proc.returncode == 0 and "Response verify OK" in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout.split(": ", 1)[1].splitlines()[0].strip()


def _private(home: Path) -> list[str]:
    """Paths under ``home`` that someone other than the owner could read."""
    loose = []
    for path in [home, *home.rglob("*")]:
        if stat.S_IMODE(path.lstat().st_mode) & 0o077:
            loose.append(f"{path.relative_to(home)} {oct(path.lstat().st_mode)}")
    return loose


def test_backup_while_serving_destroy_restore_and_continue(tmp_path, database_url, serve, monkeypatch):
    env = new_ca_env(tmp_path, database_url)
    policy_dir = env.home / "policies"                 # destroyed with the state, restored from the archive
    shutil.copytree(ROOT / "policies", policy_dir)
    env.extra["DEVICE_CA_POLICY_DIR"] = str(policy_dir)
    (env.home / "device-ca.toml").write_text('lint = "template"\n')
    env.run("init", "--organization", "BuildingCo")
    certs = {}
    for device in ("lock-1", "lock-2", "lock-3"):
        certs[device] = _issue(env, tmp_path, device)
    env.run("revoke", certs["lock-2"][0], "--reason", "keyCompromise")
    crashed = env.run("issue", "--policy", "door-lock", "--device-id", "lock-4", "--csr",
                      str(openssl_csr(tmp_path, "lock-4", "/O=BuildingCo/OU=door-lock/CN=lock-4")), check=False,
                      DEVICE_CA_FAILPOINT="after-reserve:kill", DEVICE_CA_TEST_FAILPOINTS="1")
    assert crashed.returncode != 0
    reserved = json.loads(env.run("reconcile", "--older-than", "0", "--json").stdout)
    assert [r["device_id"] for r in reserved] == ["lock-4"]

    server = serve(env)
    assert _ocsp(env, server, certs["lock-1"][1]) == "good"
    archive = tmp_path / "backup" / "device-ca.tar.gz"
    archive.parent.mkdir()
    done = env.run("backup", "--out", str(archive))
    out = done.stdout.decode()                          # three devices and serve's TLS certificate
    assert "4 certificates" in out and "not archived: tls/server.key" in out, out
    lost_serial, _ = _issue(env, tmp_path, "lock-5")         # after the backup: lost by the restore (docs)
    server.stop()
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert {"ca/root.pem", "ca/issuing.pem", "ca/chain.pem", "ca/trust.pem", "crl/issuing.crl", "settings/device-ca.toml",
            "policies/door-lock.toml", manifest["database"]["member"]} <= set(names)
    assert not any("tls/" in n or "hsm-pin" in n for n in names)
    head_at_backup = manifest["audit_head"]
    verified = json.loads(env.run("audit", "verify", "--json").stdout)
    assert verified["ok"] and verified["events"] > int(head_at_backup.split(":")[0])   # backup.created and lock-5 since

    trust_before = (env.ca_dir / "trust.pem").read_bytes()             # Keycloak's trust store
    _destroy(env)
    restored = env.run("restore", str(archive))
    text = restored.stdout.decode()
    assert f"head {head_at_backup} as in the manifest" in text, text + restored.stderr.decode()
    assert _private(env.home) == []
    assert (env.ca_dir / "trust.pem").read_bytes() == trust_before
    assert (policy_dir / "door-lock.toml").read_bytes() == (ROOT / "policies" / "door-lock.toml").read_bytes()
    assert json.loads(env.run("audit", "verify", "--json", "--expect-head", head_at_backup).stdout)["ok"]

    listed = {c["device_id"]: c["status"] for c in json.loads(env.run("list", "--json").stdout)
              if c["device_id"].startswith("lock-")}
    assert listed == {"lock-1": "good", "lock-2": "revoked", "lock-3": "good"}
    assert env.run("show", lost_serial, check=False).returncode == 5           # the point-in-time risk
    reserved_again = json.loads(env.run("reconcile", "--older-than", "0", "--json").stdout)
    assert [r["serial"] for r in reserved_again] == [reserved[0]["serial"]]

    server = serve(env)
    assert _ocsp(env, server, certs["lock-1"][1]) == "good"
    assert _ocsp(env, server, certs["lock-2"][1]) == "revoked"
    new_serial, new_cert = _issue(env, tmp_path, "lock-6")
    assert _ocsp(env, server, new_cert) == "good"
    server.stop()
    assert env.run("audit", "verify").returncode == 0

    # never a serial again: one reserved before the backup is refused when drawn, and drawn anew
    from device_ca.config import Settings
    from device_ca.services import Services

    for name, value in env.env.items():
        if name.startswith("DEVICE_CA_"):
            monkeypatch.setenv(name, value)
    services = Services(Settings.load(env.env))
    old = int(reserved[0]["serial"], 16)
    drawn = iter([old, int(certs["lock-1"][0], 16)])
    fallback = services.ra.pipeline.serials
    services.ra.pipeline.serials = lambda: next(drawn, None) or fallback()
    try:
        csr = openssl_csr(tmp_path, "lock-7", "/O=BuildingCo/OU=door-lock/CN=lock-7").read_bytes()
        issued = services.ra.issue("door-lock", csr, device_id="lock-7", actor="test")
    finally:
        services.store.db.dispose()
    assert issued.record.serial not in {reserved[0]["serial"], certs["lock-1"][0], new_serial}


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory, module_database_url):
    """A CA with two certificates, one revoked, on a token whose SO PIN is known, and its backup."""
    tmp = tmp_path_factory.mktemp("backed-up")
    token, pin, so_pin = f"t-{secrets.token_hex(4)}", secrets.token_hex(8), secrets.token_hex(8)
    init_token(token, pin, so_pin)
    (tmp / "home").mkdir()
    env = CaEnv(home=tmp / "home", token=token, pin=pin, database_url=module_database_url)
    env.run("init", "--organization", "BuildingCo")
    serial, _ = _issue(env, tmp, "lock-1")
    _issue(env, tmp, "lock-2")
    env.run("revoke", serial)
    archive = tmp / "device-ca.tar.gz"
    env.run("backup", "--out", str(archive))
    return env, archive, so_pin


def _fresh_target(tmp_path: Path, env: CaEnv, database_url: str) -> CaEnv:
    """Another, empty state directory and database with the same token."""
    (tmp_path / "target").mkdir()
    return CaEnv(home=tmp_path / "target", token=env.token, pin=env.pin, database_url=database_url)


def _state(target: CaEnv) -> tuple[list[str], int]:
    """What the target holds: state directory entries (less the PIN file) and database tables."""
    entries = sorted(p.name for p in target.home.iterdir() if p.name != "hsm-pin")
    engine = sa.create_engine(target.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        tables = len(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    return entries, tables


def test_archive_holds_no_pin_or_secret(backed_up):
    env, archive, so_pin = backed_up
    raw = gzip.decompress(archive.read_bytes())
    for secret in (env.pin, so_pin):
        assert secret.encode() not in raw
        assert secret.encode().hex().encode() not in raw
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert "hsm-pin" not in json.dumps(manifest)
    assert set(manifest["settings"]) >= {"database_url", "hsm_token", "policy_dir"}


def _rewrite(archive: Path, out: Path, change: dict[str, bytes], fix_manifest: bool) -> None:
    import hashlib

    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members.update(change)
    if fix_manifest:
        manifest = json.loads(members["manifest.json"])
        for name, data in change.items():
            manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fix_manifest", [False, True], ids=["member-changed", "member-and-manifest-changed"])
def test_tampered_archive_is_refused_and_changes_nothing(backed_up, tmp_path, database_url, fix_manifest):
    env, archive, _ = backed_up
    target = _fresh_target(tmp_path, env, database_url)
    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(archive, tampered, {"policies/door-lock.toml": b'description = "anything goes"\n'}, fix_manifest)
    proc = target.run("restore", str(tampered), check=False)
    assert proc.returncode == 3, proc.stderr
    message = proc.stderr.decode()
    assert ("signature does not verify" if fix_manifest else "does not match its SHA-256") in message, message
    assert "nothing was restored" in message
    assert _state(target) == ([], 0)


def test_restore_refuses_a_state_directory_or_database_that_is_not_empty(backed_up, tmp_path, database_url):
    env, archive, _ = backed_up
    target = _fresh_target(tmp_path, env, database_url)
    (target.home / "leftover").write_text("x")
    proc = target.run("restore", str(archive), check=False)
    assert proc.returncode == 6 and b"is not empty" in proc.stderr, proc.stderr
    (target.home / "leftover").unlink()
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE unrelated (x integer)")
    engine.dispose()
    proc = target.run("restore", str(archive), check=False)
    assert proc.returncode == 6 and b"not empty" in proc.stderr, proc.stderr
    assert _state(target) == ([], 1)
    assert target.run("restore", "--check", str(archive), check=False).returncode == 6


@pytest.mark.parametrize("other", ["empty-token", "another-ca"])
def test_restore_with_the_wrong_token_is_refused(backed_up, tmp_path, database_url, other):
    env, archive, _ = backed_up
    wrong = new_ca_env(tmp_path, f"sqlite:///{tmp_path / 'other.db'}", home_name="other")
    if other == "another-ca":
        wrong.run("init")
    target = CaEnv(home=tmp_path / "target", token=wrong.token, pin=wrong.pin, database_url=database_url)
    target.home.mkdir()
    proc = target.run("restore", str(archive), check=False)
    assert proc.returncode == 6, proc.stderr
    expected = b"holds no key 'device-ca-root'" if other == "empty-token" else b"is not the key of the root CA"
    assert expected in proc.stderr and b"nothing was restored" in proc.stderr, proc.stderr
    assert _state(target) == ([], 0)


def test_restore_check_writes_nothing(backed_up, tmp_path, database_url):
    env, archive, _ = backed_up
    target = _fresh_target(tmp_path, env, database_url)
    proc = target.run("restore", "--check", str(archive))
    assert b"nothing written" in proc.stdout
    assert _state(target) == ([], 0)
