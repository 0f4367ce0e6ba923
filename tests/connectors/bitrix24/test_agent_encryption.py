"""Encrypted backups as the vendor writes them (issue 11, point 3), restored by the agent run as
the box host runs it: a subprocess of the host's python3, stdlib only (``-I -S``: no site
packages, so no ``cryptography``) unless the case is the ``cryptography`` backend.

Every cipher × archive version × crypto backend the agent offers; a wrong password named before
anything is written; a version above 1.2 refused; the cases with no backend for the cipher; and
the ``openssl`` pipe ending cleanly when the stream or the archive is bad."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.bitrix24.agent import restore_agent as agent
from sandbox.backup_maker import make_backup

AGENT = Path(agent.__file__)
# the box host's python3 (C2B_HOST_PYTHON: another one, e.g. a 3.8 to check the oldest supported)
HOST_PYTHON = os.environ.get("C2B_HOST_PYTHON") or (
    "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable)
PASSWORD = "open sesame"
KEY = hashlib.md5(PASSWORD.encode()).hexdigest()


def run_agent(request: dict, *, bare: bool = True, timeout: float = 300) -> dict:
    """The agent's answer; ``bare``: ``python3 -I -S`` (stdlib only, no site packages)."""
    cmd = [HOST_PYTHON, "-I", "-S", str(AGENT)] if bare else [HOST_PYTHON, str(AGENT)]
    proc = subprocess.run(cmd, input=json.dumps(request).encode(), capture_output=True, timeout=timeout)
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert lines, proc.stderr.decode()[-2000:]
    return json.loads(lines[-1])


def restore_request(made, tmp: Path, key: str | None = KEY, **kw) -> dict:
    return {"op": "restore", "parts": [str(p.path) for p in made.parts], "target": str(tmp / "site"),
            "state": str(tmp / "state" / "restore.json"), "key": key, "force": True, **kw}


def check_tree(made, site: Path) -> None:
    for rel, digest in made.files.items():
        assert hashlib.sha256((site / rel).read_bytes()).hexdigest() == digest, rel


@pytest.fixture(scope="module")
def backups(tmp_path_factory):
    """One small encrypted backup per cipher × version (a few parts, several gzip members each)."""
    out = {}
    for cipher in agent.CIPHERS:
        for version in ("1.2", "1.1", "1.0"):
            out[cipher, version] = make_backup(tmp_path_factory.mktemp(f"{cipher}-{version}"), total_bytes=160_000,
                                               part_size=64 * 1024, member_step=20_000, seed=31,
                                               encrypt_password=PASSWORD, encrypt_cipher=cipher,
                                               encrypt_version=version, long_names=True)
    return out


CASES = [(c, v, b) for c in agent.CIPHERS for v in ("1.2", "1.1", "1.0")
         for b in ("cryptography", "libcrypto", "openssl", "python")
         if not (c == "aes-256-ecb" and b == "python") and not (c == "bf-ecb" and b == "openssl")]


@pytest.mark.parametrize("cipher,version,backend", CASES)
def test_encrypted_backup_restores_with_each_backend(backups, tmp_path, cipher, version, backend):
    made = backups[cipher, version]
    if backend == "cryptography" and subprocess.run([HOST_PYTHON, "-c", "import cryptography"]).returncode:
        pytest.skip(f"{HOST_PYTHON} has no cryptography package")
    answer = run_agent(restore_request(made, tmp_path, crypto=backend), bare=backend != "cryptography")
    assert answer["ok"], answer
    assert (answer["encrypted"], answer["cipher"], answer["crypto"]) == (True, cipher, backend)
    assert answer["files"] == len(made.files) and answer["tar_bytes"] == made.tar_size
    check_tree(made, tmp_path / "site")


def test_a_bare_host_picks_the_first_backend_it_has(backups, tmp_path):
    """Without site packages there is no ``cryptography``: the host's libcrypto does AES."""
    assert subprocess.run([HOST_PYTHON, "-I", "-S", "-c", "import cryptography"], capture_output=True).returncode
    answer = run_agent(restore_request(backups["aes-256-ecb", "1.2"], tmp_path))
    assert answer["ok"] and answer["crypto"] == "libcrypto", answer
    with_packages = run_agent(restore_request(backups["aes-256-ecb", "1.2"], tmp_path / "b"), bare=False)
    assert with_packages["ok"] and with_packages["crypto"] in ("cryptography", "libcrypto")


def test_openssl_enc_cannot_do_the_vendors_blowfish():
    """``openssl enc -K`` cuts a Blowfish key to 16 bytes: its known-answer test fails, so the
    agent never uses it for bf-ecb (it would call every password wrong)."""
    assert agent.crypto_backend("bf-ecb", KEY.encode(), ("openssl",)) is None
    assert agent.crypto_backend("aes-256-ecb", KEY.encode(), ("openssl",)).name == "openssl"


@pytest.mark.parametrize("cipher", agent.CIPHERS)
def test_wrong_password_is_named_before_anything_is_written(backups, tmp_path, cipher):
    wrong = hashlib.md5(b"open sesame!").hexdigest()
    answer = run_agent(restore_request(backups[cipher, "1.2"], tmp_path, key=wrong))
    assert not answer["ok"] and answer["kind"] == "auth" and "wrong password" in answer["error"], answer
    assert "password" in answer["fix"] and not (tmp_path / "site").exists()
    missing = run_agent(restore_request(backups[cipher, "1.2"], tmp_path, key=None))
    assert not missing["ok"] and "no password" in missing["error"] and not (tmp_path / "site").exists()


def test_a_version_above_1_2_is_refused(tmp_path):
    made = make_backup(tmp_path / "v13", total_bytes=40_000, part_size=64 * 1024, seed=32, encrypt_password=PASSWORD,
                       encrypt_version="1.3")
    answer = run_agent(restore_request(made, tmp_path))
    assert not answer["ok"] and "'1.3'" in answer["error"] and "newer" in answer["error"], answer
    assert "restore.php" in answer["fix"] and not (tmp_path / "site").exists()


def test_no_backend_for_the_cipher_says_what_to_install(backups, tmp_path):
    """AES on a host with neither cryptography nor OpenSSL (forced here: only the pure-Python
    Blowfish): the password cannot be checked, the fix names the packages, nothing is written."""
    answer = run_agent(restore_request(backups["aes-256-ecb", "1.2"], tmp_path, crypto="python"))
    assert not answer["ok"] and "cannot check the password" in answer["error"] and "aes-256-ecb" in answer["error"]
    assert "python3-cryptography or openssl" in answer["fix"] and not (tmp_path / "site").exists()


def test_the_openssl_pipe_ends_cleanly_on_a_bad_stream_or_a_refused_member(backups, tmp_path):
    made = backups["aes-256-ecb", "1.2"]
    # a damaged part: the feeding thread's error is what the agent reports
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    parts = []
    for p in made.parts:
        data = bytearray(p.path.read_bytes())
        if p is made.parts[1]:
            data[len(data) // 2] ^= 0xFF
        (bad_dir / p.name).write_bytes(bytes(data))
        parts.append(str(bad_dir / p.name))
    request = dict(restore_request(made, tmp_path, crypto="openssl"), parts=parts)
    answer = run_agent(request, timeout=60)
    assert not answer["ok"] and made.parts[1].name in answer["error"], answer
    # a member the agent refuses mid-stream: openssl is stopped, the answer comes
    hostile = make_backup(tmp_path / "hostile", total_bytes=200_000, part_size=64 * 1024, seed=33,
                          encrypt_password=PASSWORD, hostile=["symlink"])
    answer = run_agent(restore_request(hostile, tmp_path / "h", crypto="openssl"), timeout=60)
    assert not answer["ok"] and answer["kind"] == "unsafe", answer
