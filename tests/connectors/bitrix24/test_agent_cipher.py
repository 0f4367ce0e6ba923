"""The restore agent's own Blowfish (for hosts without the cryptography package) agrees with
OpenSSL's, byte for byte, with the vendor's 32-character key; the agent's known answers are right."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from connectors.bitrix24.agent.restore_agent import _KNOWN, Blowfish

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
    assert ours.encrypt(data) == expected
    assert ours.decrypt(expected) == data
    assert Blowfish._init[0] == 0x243F6A88  # pi's first fractional hex digits: the P-array's start


def test_known_answers_are_openssls():
    for cipher, algorithm in (("aes-256-ecb", algorithms.AES), ("bf-ecb", OpenSslBlowfish)):
        key, encrypted, plain = _KNOWN[cipher]
        enc = Cipher(algorithm(key), modes.ECB()).encryptor()
        assert (enc.update(bytes.fromhex(plain)) + enc.finalize()).hex() == encrypted, cipher
    bf_key = _KNOWN["bf-ecb"][0]
    assert len(bf_key) == 32 and bf_key[:16] != bf_key[16:]  # a backend cutting keys to 16 bytes fails it
