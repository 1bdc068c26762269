"""TLS files checked before a process starts: each fault named by setting and file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from protocol.tls_files import ca_problem, certificate_problem
from tests.conftest import self_signed


def _check(cert: Path | str, key: Path | str = "") -> str | None:
    return certificate_problem("http_tls_cert", str(cert), "http_tls_key", str(key))


def test_a_certificate_with_its_key_passes_in_one_file_or_two(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    both = tmp_path / "both.pem"
    both.write_text(cert.read_text() + key.read_text())
    assert _check(cert, key) is None
    assert _check(both) is None
    assert ca_problem("nats_tls_ca", str(cert)) is None
    # Nothing configured: nothing to check.
    assert _check("") is None
    assert ca_problem("nats_tls_ca", "") is None


def test_each_unusable_file_is_named(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other-")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    assert _check(missing, key) == f"http_tls_cert file '{missing}' does not exist"
    assert _check(cert, missing) == f"http_tls_key file '{missing}' does not exist"
    assert _check(junk, key) == f"http_tls_cert file '{junk}' holds no PEM certificate"
    # The key file given as the certificate: no certificate in it.
    assert _check(key) == f"http_tls_cert file '{key}' holds no PEM certificate"
    assert _check(cert) == f"http_tls_cert file '{cert}' holds no unencrypted PEM private key"
    assert _check(cert, other_key) == (
        f"http_tls_key file '{other_key}' is not the private key of http_tls_cert '{cert}'"
    )
    assert _check("", key) == "http_tls_key is set without http_tls_cert: set both (or neither)"
    assert ca_problem("nats_tls_ca", str(junk)) == (
        f"nats_tls_ca file '{junk}' holds no PEM CA certificate"
    )
    assert ca_problem("nats_tls_ca", str(missing)) == (
        f"nats_tls_ca file '{missing}' does not exist"
    )


def test_an_encrypted_key_is_refused_without_asking_for_its_passphrase(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-aes256", "-passout", "pass:secret",
         "-out", str(encrypted)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert _check(cert, encrypted) == (
        f"http_tls_key file '{encrypted}' holds no unencrypted PEM private key"
    )
