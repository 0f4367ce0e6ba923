"""The sandbox box portal's HTTPS front: real TLS on loopback, a certificate whose lifetime the
test chooses, so the post-migration HTTPS check can be seen healthy and faulty."""

from __future__ import annotations

import socket
import ssl
import stat
import tomllib
from datetime import datetime, timedelta, timezone

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sandbox.box_web import PAGE_TITLE, start_box_web


def _served_cert(host: str, port: int) -> x509.Certificate:
    """The certificate the server presents, read without trusting it (as a checker reports an expired one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_answers_over_tls_with_the_ca_file(tmp_path):
    with start_box_web(tmp_path, cert_days=90) as web:
        assert web.url == f"https://127.0.0.1:{web.port}/"
        resp = requests.get(web.url, verify=web.ca_file, timeout=5)
        assert resp.status_code == 200 and PAGE_TITLE in resp.text
        assert resp.headers["Content-Type"].startswith("text/html")
        assert requests.get(web.url + "nope", verify=web.ca_file, timeout=5).status_code == 404
        # the name "localhost" is in the certificate too
        assert requests.get(f"https://localhost:{web.port}/", verify=web.ca_file, timeout=5).status_code == 200
        # without the CA file the self-signed certificate is refused: TLS is really verified
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(web.url, timeout=5)
        # a strict verifier (what Python 3.13 does by default) accepts it as well
        strict = ssl.create_default_context(cafile=str(web.ca_file))
        strict.verify_flags |= ssl.VERIFY_X509_STRICT
        with socket.create_connection(("127.0.0.1", web.port), timeout=5) as raw, \
                strict.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert not stat.S_IMODE((tmp_path / "box_web_key.pem").stat().st_mode) & 0o077
    with pytest.raises(requests.exceptions.ConnectionError):  # closed: the port is free again
        requests.get(web.url, verify=web.ca_file, timeout=2)


def test_not_after_matches_cert_days(tmp_path):
    before = datetime.now(timezone.utc)
    with start_box_web(tmp_path, cert_days=10) as web:
        cert = _served_cert(web.host, web.port)
        assert cert.public_bytes(Encoding.PEM) == web.ca_file.read_bytes()
        assert cert.not_valid_after_utc == web.not_after and web.not_after.tzinfo is not None
        expected = before + timedelta(days=10)
        assert abs((web.not_after - expected).total_seconds()) < 5
        assert abs((cert.not_valid_before_utc - (before - timedelta(days=1))).total_seconds()) < 5
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in sans.get_values_for_type(x509.DNSName)
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_expired_certificate_still_serves(tmp_path):
    with start_box_web(tmp_path, cert_days=-1) as web:
        assert web.not_after < datetime.now(timezone.utc)
        with pytest.raises(requests.exceptions.SSLError, match="expired"):
            requests.get(web.url, verify=web.ca_file, timeout=5)
        cert = _served_cert(web.host, web.port)  # the server is up and presents the expired certificate
        assert cert.not_valid_after_utc == web.not_after
        assert cert.not_valid_before_utc < cert.not_valid_after_utc
        # a refused handshake does not stop the server: the next client is served
        assert _served_cert(web.host, web.port).serial_number == cert.serial_number


def test_sandbox_piece_interface(tmp_path):
    with start_box_web(tmp_path, cert_days=30) as web:
        raw = tomllib.loads("\n".join(web.toml_lines()))
        assert raw == {"verify": {"https_url": web.url, "ca_file": str(web.ca_file)}}
        assert web.toml_lines()[-1] == "" and web.secrets_toml_lines() == [] and web.env == {}
        lines = web.describe()
        assert len(lines) == 1 and web.url in lines[0]
