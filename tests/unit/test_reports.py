"""What ra/reports.py shows operators (CLI --json, the API, the console) leaves secrets out."""
from device_ca.ra.reports import _without_userinfo


def test_a_keycloak_url_is_shown_without_credentials_written_into_it():
    assert _without_userinfo(None) is None
    assert _without_userinfo("https://kc.example:8443/auth") == "https://kc.example:8443/auth"
    assert _without_userinfo("https://admin:s3cret@kc.example:8443/auth") == "https://kc.example:8443/auth"
    assert _without_userinfo("http://admin@[::1]:8080") == "http://[::1]:8080"
    assert "s3cret" not in _without_userinfo("https://admin:s3cret@kc.example/")
