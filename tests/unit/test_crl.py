"""CRLs (RFC 5280 §5) checked with tools that did not write them: openssl and pkilint."""
from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import time

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.clock import FixedClock, SystemClock
from device_ca.ca.crl import MAX_CRL_NUMBER, RevokedEntry, build_crl
from device_ca.files import publish
from device_ca.ca.lint import lint_crl, require_clean
from device_ca.errors import DeviceCAError, Kind
from helpers import CorruptingSigner, software_ca

HASH = hashes.SHA256()


@pytest.fixture(scope="module")
def now():
    # openssl judges CRL and certificate times against the real clock.
    return SystemClock().now()


@pytest.fixture(scope="module")
def pki(now):
    return software_ca(FixedClock(now - dt.timedelta(hours=1)))


def _leaf(ca, ca_key, now, cn):
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=30))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, HASH)
    )


def _crl(pki, now, entries, number=1):
    _, _, ca, ca_key = pki
    return build_crl(ca, ca_key, entries, number, now - dt.timedelta(minutes=1), now + dt.timedelta(days=1), HASH)


def test_crl_is_v2_with_number_aki_and_reasons(pki, now):
    _, _, ca, _ = pki
    revoked_at = (now - dt.timedelta(minutes=10)).replace(microsecond=0)
    entries = [RevokedEntry(0x1234, revoked_at + dt.timedelta(microseconds=999), "keyCompromise"),
               RevokedEntry(0x5678, revoked_at, "unspecified"),
               RevokedEntry(0x9ABC, revoked_at, "superseded")]
    crl = _crl(pki, now, entries, number=42)

    parsed = asn1_crl.CertificateList.load(crl.public_bytes(Encoding.DER))
    tbs = parsed["tbs_cert_list"]
    assert tbs["version"].native == "v2"
    assert tbs["issuer"].dump() == asn1_x509.Certificate.load(ca.public_bytes(Encoding.DER)).subject.dump()
    assert tbs["next_update"].native is not None
    assert tbs["signature"].dump() == parsed["signature_algorithm"].dump()
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    assert not crl.extensions.get_extension_for_class(x509.CRLNumber).critical
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.last_update_utc == now - dt.timedelta(minutes=1)

    by_serial = {entry.serial_number: entry for entry in crl}
    assert list(by_serial) == [0x1234, 0x5678, 0x9ABC]
    assert by_serial[0x1234].revocation_date_utc == revoked_at          # second precision
    assert by_serial[0x1234].extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    assert len(by_serial[0x5678].extensions) == 0                       # unspecified: no reasonCode
    assert by_serial[0x9ABC].extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.superseded
    assert crl.is_signature_valid(ca.public_key())


def test_empty_crl_has_no_revoked_certificates_field(pki, now):
    crl = _crl(pki, now, [])
    tbs = asn1_crl.CertificateList.load(crl.public_bytes(Encoding.DER))["tbs_cert_list"]
    assert isinstance(tbs["revoked_certificates"], asn1_core.Void)
    assert len(crl) == 0
    require_clean(lint_crl(crl.public_bytes(Encoding.DER)), "WARNING")


def test_openssl_reads_crl_and_rejects_revoked_leaf(pki, now, tmp_path):
    root, _, ca, ca_key = pki
    good, revoked = _leaf(ca, ca_key, now, "good-1"), _leaf(ca, ca_key, now, "revoked-1")
    crl = _crl(pki, now, [RevokedEntry(revoked.serial_number, now - dt.timedelta(minutes=5), "keyCompromise")], 7)
    (tmp_path / "crl.der").write_bytes(crl.public_bytes(Encoding.DER))
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    (tmp_path / "chain.pem").write_bytes(root.public_bytes(Encoding.PEM) + ca.public_bytes(Encoding.PEM))
    (tmp_path / "good.pem").write_bytes(good.public_bytes(Encoding.PEM))
    (tmp_path / "revoked.pem").write_bytes(revoked.public_bytes(Encoding.PEM))

    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", tmp_path / "crl.der", "-text", "-noout"],
                          capture_output=True, text=True, check=True).stdout
    assert "Version 2" in text and "Key Compromise" in text and "X509v3 CRL Number" in text
    assert f"{revoked.serial_number:X}" in text.replace(":", "")

    def verify(leaf):
        return subprocess.run(["openssl", "verify", "-crl_check", "-CRLfile", tmp_path / "crl.pem",
                               "-CAfile", tmp_path / "chain.pem", tmp_path / leaf], capture_output=True, text=True)

    ok = verify("good.pem")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = verify("revoked.pem")
    assert bad.returncode != 0
    assert "error 23" in bad.stdout + bad.stderr


def test_pkilint_in_process_and_cli(pki, now, tmp_path):
    entries = [RevokedEntry(secrets.randbits(136) | 1 << 136, now - dt.timedelta(minutes=1), reason)
               for reason in ("unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
                              "cessationOfOperation", "privilegeWithdrawn", "aACompromise")]
    der = _crl(pki, now, entries, number=MAX_CRL_NUMBER).public_bytes(Encoding.DER)
    assert lint_crl(der) == []
    if shutil.which("lint_crl") is None:
        pytest.skip("pkilint command line not installed")
    (tmp_path / "ca.crl").write_bytes(der)
    cli = subprocess.run(["lint_crl", "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", tmp_path / "ca.crl"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == "", cli.stdout + cli.stderr


@pytest.mark.parametrize("number", [0, -1, MAX_CRL_NUMBER + 1, 2**200])
def test_crl_number_out_of_range_is_refused(pki, now, number):
    with pytest.raises(DeviceCAError) as error:
        _crl(pki, now, [], number=number)
    assert "CRL number" in error.value.detail


def test_largest_crl_number_is_twenty_octets(pki, now):
    crl = _crl(pki, now, [], number=MAX_CRL_NUMBER)
    ext = crl.extensions.get_extension_for_class(x509.CRLNumber)
    assert len(ext.value.public_bytes()) == 2 + 20


def test_corrupted_signature_is_never_returned(pki, now):
    _, _, ca, ca_key = pki
    with pytest.raises(DeviceCAError) as error:
        build_crl(ca, CorruptingSigner(ca_key), [RevokedEntry(5, now, "keyCompromise")], 3,
                  now, now + dt.timedelta(days=1), HASH)
    assert error.value.kind is Kind.INTERNAL


def test_signer_of_another_key_is_refused(pki, now):
    _, _, ca, _ = pki
    with pytest.raises(DeviceCAError) as error:
        build_crl(ca, ec.generate_private_key(ec.SECP256R1()), [], 3, now, now + dt.timedelta(days=1), HASH)
    assert error.value.kind is Kind.INTERNAL


@pytest.mark.parametrize("entries, message", [
    ([RevokedEntry(5, dt.datetime(2026, 1, 1), "keyCompromise")], "naive"),
    ([RevokedEntry(5, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "certificateHold")], "reason"),
    ([RevokedEntry(5, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))] * 2, "twice"),
    ([RevokedEntry(0, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))], "serial"),
    ([RevokedEntry(2**159, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))], "serial"),
])
def test_bad_entries_are_refused(pki, now, entries, message):
    with pytest.raises(DeviceCAError) as error:
        _crl(pki, now, entries)
    assert message in error.value.detail


def test_next_update_must_follow_this_update(pki, now):
    _, _, ca, ca_key = pki
    with pytest.raises(DeviceCAError):
        build_crl(ca, ca_key, [], 1, now, now, HASH)


def test_times_are_utc_seconds(pki):
    _, _, ca, ca_key = pki
    cet = dt.timezone(dt.timedelta(hours=1))
    this_update = dt.datetime(2026, 11, 28, 13, 0, 0, 123456, tzinfo=cet)
    crl = build_crl(ca, ca_key, [], 1, this_update, this_update + dt.timedelta(hours=6), HASH)
    assert crl.last_update_utc == dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert crl.next_update_utc == dt.datetime(2026, 11, 28, 18, 0, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("count", [10_000, 100_000])
def test_large_crl_is_built_quickly(pki, now, count):
    entries = [RevokedEntry(secrets.randbits(136) | 1 << 136, now - dt.timedelta(seconds=i),
                            "keyCompromise" if i % 2 else "unspecified") for i in range(count)]
    started = time.perf_counter()
    crl = _crl(pki, now, entries)
    elapsed = time.perf_counter() - started
    size = len(crl.public_bytes(Encoding.DER))
    print(f"\nCRL with {count} entries: built, signed and verified in {elapsed:.2f} s, {size} bytes DER")
    assert len(crl) == count


def test_publish_replaces_and_keeps_old_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "issuing.crl"
    publish(target, b"first")
    assert target.read_bytes() == b"first"
    assert (target.stat().st_mode & 0o777) == 0o600                     # in the 0700 state directory, like every file
    publish(target, b"second")
    assert target.read_bytes() == b"second"

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        publish(target, b"third")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["issuing.crl"]


def _builder_crl(ca, ca_key, entries, number, this_update, next_update, hash_algorithm):
    """The same CRL made entirely by cryptography's builder: what the DER encoding must equal."""
    reasons = {"keyCompromise": x509.ReasonFlags.key_compromise, "cACompromise": x509.ReasonFlags.ca_compromise,
               "affiliationChanged": x509.ReasonFlags.affiliation_changed,
               "superseded": x509.ReasonFlags.superseded,
               "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
               "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
               "aACompromise": x509.ReasonFlags.aa_compromise}
    revoked = []
    for e in entries:
        b = x509.RevokedCertificateBuilder().serial_number(e.serial).revocation_date(e.revoked_at)
        if e.reason in reasons:
            b = b.add_extension(x509.CRLReason(reasons[e.reason]), critical=False)
        revoked.append(b.build())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateRevocationListBuilder(revoked_certificates=revoked).issuer_name(ca.subject)
            .last_update(this_update).next_update(next_update)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.CRLNumber(number), critical=False).sign(ca_key, hash_algorithm))


@pytest.mark.parametrize("key_type,hash_algorithm", [("ec:P-256", hashes.SHA256()), ("ec:P-384", hashes.SHA384()),
                                                     ("rsa:3072", hashes.SHA256())])
@pytest.mark.parametrize("count", [0, 1, 3, 200])
def test_encoded_entries_equal_what_cryptography_builds(key_type, hash_algorithm, count, now):
    """The hand-encoded revokedCertificates must give the TBS cryptography's builder gives, byte for
    byte: serials of every length (sign bit set or not, up to 20 octets), every reason, UTCTime and
    GeneralizedTime revocation dates, one and several entries, long-form lengths."""
    _, _, ca, ca_key = software_ca(FixedClock(now - dt.timedelta(hours=1)), key_type)
    reasons = ["unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
               "cessationOfOperation", "privilegeWithdrawn", "aACompromise"]
    serials = [1, 0x7F, 0x80, 0xFF, 0x100, 0x8000, 2**159 - 1, 2**152, 2**151 + 5] + \
              [secrets.randbits(136) | 1 << 136 for _ in range(max(0, count))]
    times = [now - dt.timedelta(days=1), dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
             dt.datetime(2050, 1, 1, tzinfo=dt.timezone.utc), now.astimezone(dt.timezone(dt.timedelta(hours=2)))]
    entries = [RevokedEntry(serials[i % len(serials)] + (i // len(serials)) * 2, times[i % len(times)],
                            reasons[i % len(reasons)]) for i in range(count)]
    this_update, next_update = now - dt.timedelta(minutes=1), now + dt.timedelta(days=1)
    ours = build_crl(ca, ca_key, entries, 77, this_update, next_update, hash_algorithm)
    theirs = _builder_crl(ca, ca_key, entries, 77, this_update, next_update, hash_algorithm)
    assert ours.tbs_certlist_bytes == theirs.tbs_certlist_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert ours.is_signature_valid(ca.public_key())
    assert len(ours) == count
