import pytest

from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind


def test_defaults_and_environment_win(tmp_path):
    (tmp_path / "device-ca.toml").write_text('public_url = "http://ca.example:8080"\nhsm_token = "from-file"\n')
    s = Settings.load({"DEVICE_CA_HOME": str(tmp_path), "DEVICE_CA_HSM_TOKEN": "from-env"})
    assert s.public_url == "http://ca.example:8080" and s.hsm_token == "from-env"
    assert s.database_url == f"sqlite:///{tmp_path / 'device-ca.db'}"


@pytest.mark.parametrize("url", ["ftp://x", "http//bad uri", "http://", "http://host/ x", "http://h/?q=1"])
def test_bad_public_url_is_refused(tmp_path, url):
    with pytest.raises(DeviceCAError) as info:
        Settings.load({"DEVICE_CA_HOME": str(tmp_path), "DEVICE_CA_PUBLIC_URL": url})
    assert info.value.kind is Kind.MALFORMED


def test_unknown_setting_is_refused(tmp_path):
    (tmp_path / "device-ca.toml").write_text('hsm_pin = "1234"\n')
    with pytest.raises(DeviceCAError, match="unknown settings hsm_pin"):
        Settings.load({"DEVICE_CA_HOME": str(tmp_path)})
