"""The restore agent's own Blowfish (for hosts without the cryptography package) agrees with
OpenSSL's, byte for byte, with the vendor's 32-character key."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from connectors.box_host.restore_agent import Blowfish

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish as OpenSslBlowfish
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import Blowfish as OpenSslBlowfish


def test_pure_python_blowfish_matches_openssl():
    key = hashlib.md5(b"the backup password").hexdigest().encode()
    data = os.urandom(4096)
    enc = Cipher(OpenSslBlowfish(key), modes.ECB()).encryptor()
    expected = enc.update(data) + enc.finalize()
    ours = Blowfish(key)
    ours._fast = None  # the stdlib-only path a bare host uses
    assert ours.encrypt(data) == expected
    assert ours.decrypt(expected) == data
    assert Blowfish._init[0] == 0x243F6A88  # pi's first fractional hex digits: the P-array's start
