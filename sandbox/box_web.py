"""The sandbox box portal's HTTPS front: what a browser (or a post-migration check) meets at
``https://BOX/`` once the box is live.

The real box serves the portal behind nginx with the customer's certificate; the check that
matters after the move is "the portal answers over HTTPS with a certificate valid for at least
14 days". This piece serves ``GET /`` over TLS with a generated self-signed certificate whose
lifetime is chosen (``cert_days``; negative: already expired), so the check can be seen healthy
and faulty. The certificate's PEM is the CA file a client trusts (``ca_file``); its key stays in
``out_dir`` readable by the owner only. Loopback only.

Usage: ``with start_box_web(tmp, cert_days=7) as web: requests.get(web.url, verify=web.ca_file, timeout=5)``
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CERT_FILE = "box_web_ca.pem"
KEY_FILE = "box_web_key.pem"
PAGE_TITLE = "Bitrix24 (sandbox box)"
CONNECTION_TIMEOUT_S = 10  # a client that stalls in the handshake or the request is dropped
_PAGE = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{PAGE_TITLE}</title></head>\n"
         f"<body><h1>{PAGE_TITLE}</h1><p>The restored portal answers over HTTPS.</p></body></html>\n").encode()


def make_self_signed(host: str, cert_days: float, now: datetime | None = None) -> tuple[bytes, bytes, datetime]:
    """A self-signed server certificate for ``host`` (plus ``localhost`` and ``127.0.0.1``):
    ``(cert PEM, key PEM, notAfter)``. notBefore is a day back (clock skew), notAfter
    ``cert_days`` from now; an already expired one (``cert_days <= -1``) starts a day before it ends.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)  # X.509 times have whole seconds
    not_after = now + timedelta(days=cert_days)
    not_before = min(now - timedelta(days=1), not_after - timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cloud2box sandbox box")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if ip != ipaddress.ip_address("127.0.0.1"):
            alt_names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            alt_names.append(x509.DNSName(host))
    public = key.public_key()
    # A leaf that is its own trust anchor: not a CA, with the key identifiers strict verifiers
    # (Python 3.13's VERIFY_X509_STRICT) ask for.
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem, not_after


class _PortalFront(BaseHTTPRequestHandler):
    """``GET /`` → the portal's page; anything else 404, as a portal without that page would."""

    server_version = "nginx"  # the box serves the portal behind nginx
    sys_version = ""

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(_PAGE)))
        self.end_headers()
        if body:
            self.wfile.write(_PAGE)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def log_message(self, format: str, *args) -> None:  # the sandbox stays quiet on the console
        pass


class _TlsServer(ThreadingHTTPServer):
    """Handshakes in each connection's own thread, so one stalled client holds up no other."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, context: ssl.SSLContext):
        self.tls = context
        super().__init__(address, _PortalFront)

    def finish_request(self, request, client_address) -> None:
        request.settimeout(CONNECTION_TIMEOUT_S)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused the certificate (expired…) or went away
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass

    def handle_error(self, request, client_address) -> None:  # a dropped client is no server error
        pass


@dataclass
class BoxWebSandbox:
    """A running HTTPS front of the sandbox box portal and what a config needs to check it."""

    url: str
    ca_file: Path
    not_after: datetime
    host: str
    port: int
    _server: _TlsServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """No secrets: the CA file is public."""
        return {}

    def toml_lines(self) -> list[str]:
        """``[verify]``: the portal's HTTPS address and the CA file to trust for it."""
        return ["[verify]", f'https_url = "{self.url}"', f'ca_file = "{self.ca_file}"', ""]

    def secrets_toml_lines(self) -> list[str]:
        return []

    def describe(self) -> list[str]:
        """One line for the sandbox's address list."""
        return [f"box portal HTTPS {self.url} (self-signed certificate valid until "
                f"{self.not_after:%Y-%m-%d %H:%M} UTC, CA file {self.ca_file})"]

    def close(self) -> None:
        """Stop serving and free the port (the certificate files stay)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "BoxWebSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tls_context(out_dir: str | Path, *, host: str, cert_days: float, cert_name: str,
                key_name: str) -> tuple[ssl.SSLContext, Path, datetime]:
    """A server TLS context with a fresh certificate for ``host``: ``(context, CA file, not after)``.
    The certificate is the CA file clients trust (``out_dir/cert_name``); its key goes next to it
    (``out_dir/key_name``, mode 0600)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem, not_after = make_self_signed(host, cert_days)
    ca_file = (out / cert_name).resolve()
    key_file = (out / key_name).resolve()
    ca_file.write_bytes(cert_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(ca_file, key_file)
    return context, ca_file, not_after


def start_box_web(out_dir: str | Path, *, cert_days: float = 90, host: str = "127.0.0.1",
                  port: int = 0) -> BoxWebSandbox:
    """Serve the sandbox box portal over HTTPS on ``host:port`` (0: a free port) with a fresh
    self-signed certificate valid ``cert_days`` days from now (negative: expired that long ago).

    Writes ``out_dir/box_web_ca.pem`` (the certificate: the CA file clients trust) and
    ``out_dir/box_web_key.pem`` (its key, mode 0600).
    """
    context, ca_file, not_after = tls_context(out_dir, host=host, cert_days=cert_days, cert_name=CERT_FILE,
                                              key_name=KEY_FILE)
    server = _TlsServer((host, port), context)
    bound_port = server.server_address[1]
    url_host = f"[{host}]" if ":" in host else host
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"box-web-{bound_port}", daemon=True)
    thread.start()
    return BoxWebSandbox(f"https://{url_host}:{bound_port}/", ca_file, not_after, host, bound_port, server, thread)
