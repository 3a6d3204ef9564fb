"""The backup archive's reader and the secrets kept out of archives and command lines."""
from __future__ import annotations

import io
import tarfile

import pytest

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra import archive
from device_ca.ra.backup import settings_summary, settings_toml
from device_ca.store.snapshot import libpq_parameters


def test_libpq_parameters_keep_the_password_apart():
    params, password = libpq_parameters("postgresql+psycopg://ca:s3cr%3At@db1:5433/devca?sslmode=require")
    assert password == "s3cr:t"
    assert params == {"dbname": "devca", "user": "ca", "host": "db1", "port": "5433", "sslmode": "require",
                      "connect_timeout": "5"}
    params, password = libpq_parameters("postgresql:///devca?host=/run/pg&password=qq&host=/run/pg2")
    assert password == "qq" and "qq" not in repr(params) and params["host"] == "/run/pg,/run/pg2"


def test_a_settings_file_with_a_password_is_archived_without_it(tmp_path):
    path = tmp_path / "device-ca.toml"
    path.write_text('database_url = "postgresql://ca:hunter2@db/devca"\npublic_url = "https://ca.example"\n'
                    'keycloak_concurrency = 4\n')
    data, dropped = settings_toml(path)
    assert dropped == ["database_url"] and b"hunter2" not in data
    assert b'public_url = "https://ca.example"' in data and b"keycloak_concurrency = 4" in data
    path.write_text('public_url = "https://ca.example"  # comment kept\n')
    assert settings_toml(path) == (path.read_bytes(), [])


def test_the_settings_summary_masks_passwords(tmp_path):
    from device_ca.config import Settings

    settings = Settings.load({"DEVICE_CA_HOME": str(tmp_path),
                              "DEVICE_CA_DATABASE_URL": "postgresql://ca:hunter2@db/devca"})
    summary = settings_summary(settings)
    assert summary["database_url"] == "postgresql://ca:***@db/devca"
    assert "hunter2" not in repr(summary)


def _tar(path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            info = tarfile.TarInfo(m[0])
            info.size = len(m[1])
            tar.addfile(info, io.BytesIO(m[1]))


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../b", "./x", "dup", "link"])
def test_the_reader_takes_plain_regular_files_once(tmp_path, bad):
    members: list = [(archive.MANIFEST, b"{}"), (archive.SIGNATURE, b"x")]
    if bad == "dup":
        members += [("ca/root.pem", b"1"), ("ca/root.pem", b"2")]
    elif bad == "link":
        link = tarfile.TarInfo("ca/root.pem")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        members.append(link)
    else:
        members.append((bad, b"x"))
    _tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(DeviceCAError) as caught:
        archive.open_archive(tmp_path / "a.tar.gz")
    assert caught.value.kind is Kind.MALFORMED and "nothing was restored" in caught.value.detail
    assert not (tmp_path / "escape").exists()


def test_not_an_archive_is_malformed(tmp_path):
    (tmp_path / "x").write_bytes(b"not a tar")
    with pytest.raises(DeviceCAError) as caught:
        archive.open_archive(tmp_path / "x")
    assert caught.value.kind is Kind.MALFORMED
    with pytest.raises(DeviceCAError) as caught:
        archive.open_archive(tmp_path / "missing")
    assert caught.value.kind is Kind.NOT_FOUND
