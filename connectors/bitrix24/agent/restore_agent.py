"""cloud2box restore agent: runs ON the box host with the host's python3 (stdlib only, Python ≥ 3.8).

cloud2box uploads this one file over SFTP and runs ``python3 restore_agent.py``; the request is
one JSON object on stdin (secrets travel there, never on the command line), the answer is one
JSON object on the last line of stdout: ``{"ok": true, ...}`` or ``{"ok": false, "error", "fix"}``.

Operations (``"op"``):

- ``facts``: what preflight needs — OS, CPUs, RAM, free disk, PHP/DB versions, listening ports, clock.
- ``restore``: the staged parts, in order, as one stream → gzip members inflated → decrypted when
  the first block says so → tar members extracted into the site root. Files are written to a temp
  name and renamed, so a re-run after any failure overwrites half-done work and ends in the same
  state; a finished restore is remembered in a state file and not repeated.
- ``import_db``: the dump files, in order, through the host's ``mysql``/``mariadb`` client into a
  database that is dropped and recreated first (so a re-run ends in the same state).
- ``sql``: run statements, return result rows (post-restore checks and fixes).
- ``write_settings``: put the box's DB credentials into the masked ``.settings.php``/``dbconn.php``.

Inflating (guarantee): every part is checked member by member (gzip CRC and length, then the
part's ``BX`` size); each inflate call returns at most ``OUT_SIZE`` bytes and reads at most
``READ_SIZE``, so memory stays bounded (a few MiB) for any member layout and any compressibility,
and the loop ends at the end of every member, wherever it falls in a read.

Encrypted archives (the vendor's ``CTar``): the first 512-byte block is 256 plain bytes (random
id, ``Bitrix Encrypted File``, version, zeros) + the same 256 bytes encrypted; versions up to
``1.2`` are read, newer ones refused. The cipher is found the vendor's way: ``aes-256-ecb``, then
``bf-ecb``, keeping the one that turns the encrypted copy into the plain one; the key is
md5(password) as 32 hex characters (the request's ``key``), no padding, ECB over all later
blocks. A wrong password is named as such before anything is written. Decryption uses the first
of these the host offers that passes a known-answer test:

1. ``cryptography`` — the Python package, when the host's python3 has it (both ciphers);
2. ``libcrypto`` — the host's OpenSSL library (which python3's own hashlib links) through
   ctypes, in process (AES; Blowfish where OpenSSL still offers it: 1.1, or 3.x with its legacy
   provider);
3. ``openssl`` — the host's ``openssl enc`` binary as a pipe fed from a thread (AES only: it
   cuts Blowfish keys to 16 bytes, so its known-answer test fails for ``bf-ecb``). The key is
   then on that process's command line for the restore's duration (visible to local users in
   ``ps``): the reason it comes after ``libcrypto``;
4. ``python`` — this file's own Blowfish, for ``bf-ecb`` only (about 1 MB/s).

With none of 1–3 for an AES archive the restore stops before writing anything: "install
python3-cryptography or openssl on the host". The request's ``crypto`` (a backend name) forces
one backend (tests).

Safety (guarantee): nothing is created, written or left outside the site root, whatever the
member sequence. The tree is reached only through directory descriptors opened with
``O_NOFOLLOW``; a member's path is walked component by component, links (those the archive made
earlier, and ones that were in the site root before) are followed by this code, never by the
kernel, and a walk that would leave the root stops the restore. Member names may not be absolute
or hold ``..``; a symlink's target may not be absolute, may hold ``..`` only at its start and at
most as many as its directory is deep — so no later member can make it point out: every link the
archive makes resolves inside the root, for ever (stricter than Python's ``data`` filter, which
checks a link against the tree of the moment only); a hard link must lead to a regular file
inside (a hard link to a symlink links the file it leads to). Files and links are created at a
temp name with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (whatever was planted there is removed, never
written through) and renamed over the member's name, which replaces a link or a file there
rather than writing through it, as GNU tar does; a directory is never replaced. Every check of a
member runs before anything is created for it. A refused member stops the restore (``kind:
unsafe``; a link already in the site root that leads out: ``fatal``, fix "remove it"): what came
before it stays, inside the root. Files get the archive's mode minus group/other write and
set-id bits, plus owner read/write (the rule of Python's tar ``data`` filter); directories get
the umask's.
"""

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

BLOCK = 512
SIGNATURE = b"Bitrix Encrypted File"
READ_SIZE = 1 << 20  # compressed bytes per read
OUT_SIZE = 1 << 20  # most bytes one inflate call may return
CIPHERS = ("aes-256-ecb", "bf-ecb")  # CTar::getCryptoAlgorithmList, in the order the vendor tries them
MAX_VERSION = (1, 2)  # CTar::openRead refuses version_compare(v, '1.2', '>')
BACKENDS = ("cryptography", "libcrypto", "openssl", "python")
MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit


class AgentError(Exception):
    def __init__(self, message, fix=None, kind="fatal"):
        super().__init__(message)
        self.message, self.fix, self.kind = message, fix, kind


class Unsafe(AgentError):
    pass


class _Unavailable(Exception):
    """A crypto backend the host does not offer (or that fails its known-answer test)."""


# --- Blowfish (the vendor's older archives are Blowfish-ECB; the host may lack any crypto library) ---

def _pi_words(count):
    """The first ``count`` 32-bit words of pi's fractional hex digits: Blowfish's P-array and
    S-boxes, computed (Machin's formula) rather than pasted as 4 KiB of constants."""
    bits = count * 32 + 64
    one = 1 << bits

    def arctan_inv(x):
        total = term = one // x
        x2, n, sign = x * x, 3, -1
        while term:
            term //= x2
            total += sign * (term // n)
            sign, n = -sign, n + 2
        return total

    pi = 16 * arctan_inv(5) - 4 * arctan_inv(239)
    frac = (pi - 3 * one) >> 64
    return [(frac >> (32 * (count - 1 - i))) & 0xFFFFFFFF for i in range(count)]


class Blowfish:
    """Blowfish (Schneier 1993) in ECB mode, big-endian words, any key length up to 72 bytes, as
    OpenSSL and the vendor's own fallback (``CTar::bf_ecb_decrypt``) compute it."""

    _init = None

    def __init__(self, key):
        if Blowfish._init is None:
            Blowfish._init = _pi_words(18 + 4 * 256)
        words = Blowfish._init
        self.p = list(words[:18])
        self.s = [list(words[18 + 256 * i:18 + 256 * (i + 1)]) for i in range(4)]
        k = [key[i % len(key)] for i in range(72)]
        for i in range(18):
            self.p[i] ^= (k[4 * i] << 24) | (k[4 * i + 1] << 16) | (k[4 * i + 2] << 8) | k[4 * i + 3]
        left = right = 0
        for i in range(0, 18, 2):
            left, right = self._crypt(left, right, self.p)
            self.p[i], self.p[i + 1] = left, right
        for box in self.s:
            for i in range(0, 256, 2):
                left, right = self._crypt(left, right, self.p)
                box[i], box[i + 1] = left, right
        self._p_reversed = self.p[::-1]

    def _crypt(self, left, right, p):
        """One block through the 16 rounds with the P-array ``p`` (reversed ``p`` decrypts)."""
        s0, s1, s2, s3 = self.s
        for i in range(0, 16, 2):
            left ^= p[i]
            right ^= ((((s0[left >> 24] + s1[(left >> 16) & 255]) & 0xFFFFFFFF) ^ s2[(left >> 8) & 255])
                      + s3[left & 255]) & 0xFFFFFFFF
            right ^= p[i + 1]
            left ^= ((((s0[right >> 24] + s1[(right >> 16) & 255]) & 0xFFFFFFFF) ^ s2[(right >> 8) & 255])
                     + s3[right & 255]) & 0xFFFFFFFF
        return right ^ p[17], left ^ p[16]

    def _blocks(self, data, p):
        n = len(data) // 8 * 2
        words = struct.unpack(">%dI" % n, bytes(data[:n * 4]))
        out = []
        crypt = self._crypt
        for i in range(0, n, 2):
            out.extend(crypt(words[i], words[i + 1], p))
        return struct.pack(">%dI" % n, *out)

    def decrypt(self, data):
        return self._blocks(data, self._p_reversed)

    def encrypt(self, data):
        return self._blocks(data, self.p)


# --- decryption backends ------------------------------------------------------------------

# known answers: FIPS-197 C.3 for AES-256; for Blowfish a 32-byte key whose halves differ, so a
# backend that cuts the key to 16 bytes (``openssl enc``) fails
_KNOWN = {
    "aes-256-ecb": (bytes(range(32)), "8ea2b7ca516745bfeafc49904b496089", "00112233445566778899aabbccddeeff"),
    "bf-ecb": (b"d41d8cd98f00b204e9800998ecf8427e", "eafb33f2686421a7f4f1c3dc4a0938e4", b"cloud2box KAT 16".hex()),
}
_CIPHER_BLOCK = {"aes-256-ecb": 16, "bf-ecb": 8}


class _Backend:
    """Decrypts one cipher with one key. ``update`` takes whole cipher blocks (bytes)."""

    name = ""

    def __init__(self, cipher, key):
        self.cipher, self.key = cipher, key

    def update(self, data):
        raise NotImplementedError

    def stream(self, chunks):
        """The decrypted stream of ``chunks`` (any lengths), in pieces."""
        size = _CIPHER_BLOCK[self.cipher]
        rest = b""
        for chunk in chunks:
            if rest:
                need = size - len(rest)
                rest += chunk[:need]
                chunk = chunk[need:]
                if len(rest) < size:
                    continue
                yield self.update(rest)
            cut = len(chunk) - len(chunk) % size
            if cut:
                yield self.update(chunk if cut == len(chunk) else chunk[:cut])
            rest = chunk[cut:]
        if rest:
            raise AgentError("the encrypted archive is truncated: it ends inside a cipher block (%d stray bytes)"
                             % len(rest), fix="the last part is truncated: copy it again")


class _Cryptography(_Backend):
    name = "cryptography"

    def __init__(self, cipher, key):
        super().__init__(cipher, key)
        import warnings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Blowfish is "deprecated" there; the vendor still wrote it
                from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
                if cipher == "aes-256-ecb":
                    algorithm = algorithms.AES(key)
                else:
                    try:
                        from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish as _Bf
                    except ImportError:  # cryptography < 43 (e.g. Debian 12's python3-cryptography)
                        from cryptography.hazmat.primitives.ciphers.algorithms import Blowfish as _Bf
                    algorithm = _Bf(key)
                self._decryptor = Cipher(algorithm, modes.ECB()).decryptor()
        except Exception as exc:  # ImportError, UnsupportedAlgorithm, a broken install: try the next one
            raise _Unavailable(str(exc))

    def update(self, data):
        return self._decryptor.update(data)


class _Libcrypto(_Backend):
    name = "libcrypto"
    _lib = None

    @classmethod
    def _load(cls):
        if cls._lib is None:
            import ctypes
            import ctypes.util
            try:  # python3's own OpenSSL binding: loading it maps the libcrypto the host has
                import _hashlib  # noqa: F401
            except ImportError:
                pass
            lib = None
            for name in ("libcrypto.so.3", "libcrypto.so.1.1", ctypes.util.find_library("crypto")):
                try:
                    lib = ctypes.CDLL(name) if name else None
                except OSError:
                    continue
                if lib is not None:
                    break
            if lib is None:
                raise _Unavailable("no libcrypto")
            p, i = ctypes.c_void_p, ctypes.c_int
            for fn, res, args in (("EVP_CIPHER_CTX_new", p, []), ("EVP_CIPHER_CTX_free", None, [p]),
                                  ("EVP_aes_256_ecb", p, []), ("EVP_bf_ecb", p, []),
                                  ("EVP_DecryptInit_ex", i, [p, p, p, ctypes.c_char_p, ctypes.c_char_p]),
                                  ("EVP_CIPHER_CTX_set_key_length", i, [p, i]),
                                  ("EVP_CIPHER_CTX_set_padding", i, [p, i]),
                                  ("EVP_DecryptUpdate", i, [p, p, ctypes.POINTER(i), ctypes.c_char_p, i])):
                f = getattr(lib, fn)
                f.restype, f.argtypes = res, args
            if hasattr(lib, "OSSL_PROVIDER_load"):  # OpenSSL 3 keeps Blowfish in its legacy provider
                lib.OSSL_PROVIDER_load.restype, lib.OSSL_PROVIDER_load.argtypes = p, [p, ctypes.c_char_p]
                lib.OSSL_PROVIDER_load(None, b"legacy")
                lib.OSSL_PROVIDER_load(None, b"default")  # loading one stops the automatic default
            cls._lib = lib
        return cls._lib

    def __init__(self, cipher, key):
        super().__init__(cipher, key)
        try:
            lib = self._load()
        except (ImportError, OSError, AttributeError) as exc:
            raise _Unavailable(str(exc))
        import ctypes
        self._ctypes = ctypes
        evp = lib.EVP_aes_256_ecb() if cipher == "aes-256-ecb" else lib.EVP_bf_ecb()
        ctx = lib.EVP_CIPHER_CTX_new()
        if not evp or not ctx:
            raise _Unavailable("libcrypto has no %s" % cipher)
        self._ctx = ctx
        if not (lib.EVP_DecryptInit_ex(ctx, evp, None, None, None) == 1
                and lib.EVP_CIPHER_CTX_set_key_length(ctx, len(key)) == 1
                and lib.EVP_DecryptInit_ex(ctx, None, None, bytes(key), None) == 1
                and lib.EVP_CIPHER_CTX_set_padding(ctx, 0) == 1):
            raise _Unavailable("libcrypto refuses %s with a %d-byte key" % (cipher, len(key)))

    def update(self, data):
        ct = self._ctypes
        n = len(data)
        out = bytearray(n + 32)
        written = ct.c_int(0)
        target = (ct.c_char * len(out)).from_buffer(out)
        ok = self._lib.EVP_DecryptUpdate(self._ctx, ct.addressof(target), ct.byref(written), bytes(data), n)
        del target
        if ok != 1 or written.value != n:
            raise AgentError("libcrypto failed to decrypt %d bytes" % n, fix="re-run with another crypto backend")
        del out[n:]
        return out

    def __del__(self):
        if getattr(self, "_ctx", None) and self._lib is not None:
            self._lib.EVP_CIPHER_CTX_free(self._ctx)
            self._ctx = None


class _OpensslBinary(_Backend):
    name = "openssl"

    def __init__(self, cipher, key):
        super().__init__(cipher, key)
        exe = shutil.which("openssl")
        if not exe:
            raise _Unavailable("no openssl binary")
        self._cmd = [exe, "enc", "-d", "-" + cipher, "-K", bytes(key).hex(), "-nopad", "-bufsize", str(READ_SIZE)]

    def update(self, data):
        try:
            proc = subprocess.run(self._cmd, input=bytes(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise _Unavailable(str(exc))
        if proc.returncode != 0:
            raise _Unavailable(proc.stderr.decode(errors="replace")[:200])
        return proc.stdout

    def stream(self, chunks):
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        failed = []

        def feed():  # a thread feeds openssl while this one reads it: neither pipe can fill up and block both
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # openssl ended (or was stopped): its exit status or the reader tells why
            except BaseException as exc:  # a corrupt part: raised in the reader once openssl drained
                failed.append(exc)
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        feeder = threading.Thread(target=feed, name="openssl-feed", daemon=True)
        feeder.start()
        try:
            out = proc.stdout.fileno()
            while True:
                data = os.read(out, READ_SIZE)
                if not data:
                    break
                yield data
            feeder.join()
            proc.wait(timeout=120)
            if failed:
                raise failed[0]
            if proc.returncode != 0:
                err.seek(0)
                raise AgentError("openssl enc failed (exit %d): %s" % (proc.returncode,
                                                                        err.read(300).decode(errors="replace").strip()),
                                 fix="install python3-cryptography on the host, then re-run")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            feeder.join(timeout=60)
            proc.stdout.close()
            err.close()


class _PythonBlowfish(_Backend):
    name = "python"

    def __init__(self, cipher, key):
        super().__init__(cipher, key)
        if cipher != "bf-ecb":
            raise _Unavailable("no pure-Python %s" % cipher)
        self._bf = Blowfish(bytes(key))

    def update(self, data):
        return self._bf.decrypt(data)


_BACKEND_CLASSES = {"cryptography": _Cryptography, "libcrypto": _Libcrypto, "openssl": _OpensslBinary,
                    "python": _PythonBlowfish}


def crypto_backend(cipher, key, names=BACKENDS):
    """The first backend of ``names`` that offers ``cipher`` and passes the known-answer test,
    set up with ``key``; None when none does."""
    known_key, known_cipher, known_plain = _KNOWN[cipher]
    for name in names:
        cls = _BACKEND_CLASSES[name]
        try:
            if cls is not _PythonBlowfish and \
                    cls(cipher, known_key).update(bytes.fromhex(known_cipher)) != bytes.fromhex(known_plain):
                continue
            return cls(cipher, key)
        except _Unavailable:
            continue
    return None


def _version(field):
    text = field.rstrip(b"\0").strip()
    if not re.match(rb"^\d+(\.\d+)*$", text):
        return None, text.decode("ascii", "replace")
    return tuple(int(n) for n in text.split(b".")), text.decode()


def open_encryption(block, key, names=BACKENDS):
    """The backend that decrypts the archive whose first 512 bytes are ``block``; None when the
    archive is not encrypted. Raises before anything is written: unknown version, no password,
    wrong password, no backend for the cipher."""
    if len(block) < BLOCK or block[100:190].rstrip(b"\0").strip() != SIGNATURE:
        return None
    version, text = _version(block[190:200])
    if version is None or version > MAX_VERSION:
        raise AgentError("the backup is encrypted with archive version %r, newer than the %s this agent reads"
                         % (text, ".".join(map(str, MAX_VERSION))),
                         fix="restore this backup with the vendor's restore.php, or update cloud2box")
    if not key:
        raise AgentError("the backup is encrypted and no password was given",
                         fix="set the backup's encryption password in [box_host] archive_password_secret")
    missing = []
    for cipher in CIPHERS:
        backend = crypto_backend(cipher, key, names)
        if backend is None:
            missing.append(cipher)
        elif backend.update(block[256:512]) == block[:256]:
            return backend
    if missing:
        raise AgentError("cannot check the password of the encrypted backup: the host has no way to decrypt %s "
                         "(tried: %s); nothing was written" % (" or ".join(missing), ", ".join(names)),
                         fix="install python3-cryptography or openssl on the box host, then re-run")
    raise AgentError("wrong password for the encrypted backup: with it neither %s turns the encrypted copy in "
                     "its first block back into the plain one; nothing was written" % " nor ".join(CIPHERS),
                     kind="auth",
                     fix="check the encryption password set when the backup was made")


# --- the parts as one tar stream ----------------------------------------------------------

class PartStream:
    """Yields the uncompressed tar bytes of the parts, in order; checks each part's gzip
    members (CRC, length: zlib does) and its BX size field; names the part on any error.
    Memory: one read (``READ_SIZE``) and one inflate result (``OUT_SIZE``) at a time."""

    def __init__(self, paths):
        self.paths = paths
        self.bytes_in = 0
        self.bytes_out = 0

    def chunks(self):
        for number, path in enumerate(self.paths):
            name = os.path.basename(path)
            try:
                f = open(path, "rb", buffering=0)
            except OSError as exc:
                raise AgentError("part %s cannot be read: %s" % (name, exc.strerror),
                                 fix="stage the part again (re-run the step)")
            with f:
                head = f.read(22)
                if not head:
                    raise AgentError("part %s is truncated: the file is empty" % name,
                                     fix="copy the whole %s again, then re-run" % name)
                expected = None
                if len(head) >= 22 and head[:2] == b"\x1f\x8b" and head[3] & 4 and head[16:18] == b"BX":
                    expected = int.from_bytes(head[18:22], "little")
                got = 0
                d = zlib.decompressobj(31)
                started = False
                data = head
                try:
                    while data:
                        self.bytes_in += len(data)
                        while data:
                            started = True
                            out = d.decompress(data, OUT_SIZE)
                            if out:
                                got += len(out)
                                self.bytes_out += len(out)
                                yield out
                            if d.eof:  # the member ended inside this read: the rest starts the next
                                data = d.unused_data
                                d = zlib.decompressobj(31)
                                started = False
                            elif d.unconsumed_tail:  # the output limit was reached: go on with the rest
                                if not out and len(d.unconsumed_tail) == len(data):
                                    raise zlib.error("inflate makes no progress")
                                data = d.unconsumed_tail
                            else:
                                data = b""
                        data = f.read(READ_SIZE)
                    while started and not d.eof:  # input ended: drain what zlib still holds back
                        out = d.decompress(b"", OUT_SIZE)
                        if not out:
                            break
                        got += len(out)
                        self.bytes_out += len(out)
                        yield out
                except zlib.error as exc:
                    raise AgentError("part %s (number %d) is corrupt: %s" % (name, number, exc),
                                     fix="copy a good %s again (from the mirror or the download), then re-run" % name)
                if started and not d.eof:
                    raise AgentError("part %s is truncated (its last gzip member ends early)" % name,
                                     fix="copy the whole %s again, then re-run" % name)
                if expected is not None and got != expected:
                    raise AgentError("part %s holds %d tar bytes, its header says %d" % (name, got, expected),
                                     fix="copy a good %s again, then re-run" % name)


class Blocks:
    """The tar stream in whole blocks, from chunks of any length, without copying file data."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._cur = b""
        self._off = 0
        self.offset = 0  # tar bytes consumed

    def _more(self):
        for chunk in self._chunks:
            if chunk:
                self._cur, self._off = chunk, 0
                return True
        return False

    def read(self, n):
        """Exactly ``n`` bytes, or None at the end of the stream."""
        if len(self._cur) - self._off >= n:
            data = bytes(self._cur[self._off:self._off + n])
            self._off += n
            self.offset += n
            return data
        pieces = []
        try:
            for piece in self.pieces(n):
                pieces.append(bytes(piece))
        except _EndOfStream as end:
            if end.got == 0:
                return None
            raise AgentError("the tar stream is truncated: it ends inside a block (%d stray bytes)" % end.got,
                             fix="the last part is incomplete: copy it again")
        return b"".join(pieces)

    def pieces(self, n):
        """``n`` bytes as memoryviews of the chunks; raises :class:`_EndOfStream` if they end first."""
        got = 0
        while got < n:
            avail = len(self._cur) - self._off
            if not avail:
                if not self._more():
                    raise _EndOfStream(got)
                continue
            take = min(avail, n - got)
            yield memoryview(self._cur)[self._off:self._off + take]
            self._off += take
            self.offset += take
            got += take


class _EndOfStream(Exception):
    def __init__(self, got):
        super().__init__(got)
        self.got = got


def _octal(field):
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if field[:1] == b"\x80":  # GNU base-256 for big sizes
        return int.from_bytes(field[1:], "big")
    try:
        return int(field or b"0", 8)
    except ValueError:
        raise AgentError("tar header has a bad number field %r" % field[:20],
                         fix="a part is damaged although its gzip CRC was fine; copy the parts again")


def _cstr(field):
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data):
    out = {}
    while data:
        try:
            length = int(data.split(b" ", 1)[0])
        except ValueError:
            break
        if length <= 0:
            break
        record, data = data[:length], data[length:]
        key, _, value = record.split(b" ", 1)[-1].rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return out


def safe_relpath(name):
    """The member's path components relative to the target, or raise :class:`Unsafe`."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name) or "\\" in name:
        raise Unsafe("archive member %r has an absolute path" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Unsafe("archive member %r climbs out with '..'" % name)
    return parts


def link_ups(name, target):
    """How many levels the symlink target climbs (its leading ``..``), or raise :class:`Unsafe`
    for targets that could leave the root now or after a later member: absolute, or ``..``
    after a name."""
    if not target:
        raise Unsafe("archive symlink %r has an empty target" % name)
    if target.startswith("/"):
        raise Unsafe("archive symlink %r points to the absolute path %r" % (name, target))
    ups, down = 0, False
    for part in target.split("/"):
        if part == "..":
            if down:
                raise Unsafe("archive symlink %r -> %r goes down and back up ('..' after a name): a later member "
                             "could make it point out of the site root" % (name, target))
            ups += 1
        elif part not in ("", "."):
            down = True
    return ups


# --- the site root, changed only through directory descriptors ------------------------------

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
MAX_HEADER_DATA = 1 << 20  # a long name or pax header larger than this is not a site's


def _redo(message):
    return AgentError(message, fix="remove it from the site root (or restore into an empty one), then re-run")


class Tree:
    """The target directory. Every path is walked here, component by component, from a
    descriptor of the root: directories are opened with ``O_NOFOLLOW``, links are read and
    followed by :meth:`resolve` (refused when they lead out), nothing is reached by a path the
    kernel would resolve. Directories are never removed or replaced, so a descriptor of one stays
    the directory it was checked to be."""

    MAX_FDS = 256

    def __init__(self, root):
        self.root = os.path.realpath(root)
        os.makedirs(self.root, exist_ok=True)
        self._fds = {(): os.open(self.root, _O_DIR)}  # real (link-free) path → descriptor
        self._walks = {}  # member directory path → its real path; forgotten when links change

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def trim(self):
        """Between members: keep the number of open descriptors bounded."""
        if len(self._fds) > self.MAX_FDS:
            for key in [k for k in self._fds if k]:
                os.close(self._fds.pop(key))

    def links_changed(self):
        self._walks.clear()

    def dir_fd(self, real):
        """Descriptor of the existing directory ``real`` (a link-free path, a tuple)."""
        fd = self._fds.get(real)
        if fd is not None:
            return fd
        k = len(real) - 1
        while k > 0 and real[:k] not in self._fds:
            k -= 1
        fd = self._fds[real[:k]]
        for i in range(k, len(real)):
            try:
                fd = os.open(real[i], _O_DIR, dir_fd=fd)
            except OSError as exc:
                raise AgentError("cannot open the directory %s in the site root: %s"
                                 % (_shown(real[:i + 1]), exc.strerror),
                                 fix="check the SSH user's rights there and that nothing else changes the site root "
                                     "during the restore, then re-run")
            self._fds[real[:i + 1]] = fd
        return fd

    def resolve(self, parts, follow_last=False):
        """Where the member path ``parts`` leads: ``(real, new, st)`` — the link-free path (a
        tuple), the index from which its components do not exist yet (None: all exist) and the
        lstat of its last component (None when new). Follows links (the last one too if
        ``follow_last``); raises AgentError when the walk would leave the root (only a link that
        was in the site root before can lead out) or goes through a file, a link to nothing or a
        loop of links."""
        real = []
        todo = [(p, False) for p in reversed(parts)]
        hops = 0
        new = st = link = None
        while todo:
            name, from_link = todo.pop()
            if name == "..":  # only from a link target, so only while everything exists
                if not real:  # links the archive makes cannot climb that far: this one was there before
                    raise _redo("archive member %r would leave the site root through the link %s, which was in "
                                "the site root before the restore; cloud2box does not write through it"
                                % ("/".join(parts), link))
                real.pop()
                st = None
                continue
            if new is not None:
                real.append(name)
                continue
            fd = self.dir_fd(tuple(real))
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if from_link:
                    raise _redo("archive member %r goes through a link to nothing (%s)"
                                % ("/".join(parts), _shown(real + [name])))
                st, new = None, len(real)
                real.append(name)
                continue
            if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _redo("archive member %r goes through a loop of links" % "/".join(parts))
                target = os.readlink(name, dir_fd=fd)
                link = "%s -> %s" % (_shown(real + [name]), target)
                if target.startswith("/"):  # only a link that was in the site root before can be absolute
                    inner = target[len(self.root):] if (target + "/").startswith(self.root + "/") else None
                    if inner is None or ".." in inner.split("/"):
                        raise _redo("archive member %r would leave the site root through the link %s, which was "
                                    "in the site root before the restore; cloud2box does not write through it"
                                    % ("/".join(parts), link))
                    real, target = [], inner
                todo.extend((p, True) for p in reversed(target.split("/")) if p not in ("", "."))
                st = None
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                raise _redo("archive member %r needs %s to be a directory, but it is not"
                            % ("/".join(parts), _shown(real + [name])))
            real.append(name)
        real = tuple(real)
        if new is None and st is None:  # the walk ended on a directory reached by '..' or a link
            st = os.fstat(self.dir_fd(real))
        return real, new, st

    def make_dirs(self, real, new, upto):
        """Create ``real[new:upto]`` as directories (after every check has passed)."""
        if new is not None:
            for i in range(new, upto):
                os.mkdir(real[i], 0o777, dir_fd=self.dir_fd(real[:i]))

    def locate_parent(self, parts):
        """``(real, new)`` of the directory that will hold the member ``parts``; creates nothing."""
        real = self._walks.get(tuple(parts[:-1]))
        if real is not None:
            return real, None
        real, new, st = self.resolve(parts[:-1], follow_last=True)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise _redo("archive member %r needs %s to be a directory, but it is not" % ("/".join(parts), _shown(real)))
        return real, new

    def make_parent(self, parts, real, new):
        """Descriptor of the member's directory (located by :meth:`locate_parent`), created if new."""
        self.make_dirs(real, new, len(real))
        self._walks[tuple(parts[:-1])] = real
        return self.dir_fd(real)


def _shown(real):
    return "/".join(real) or "."


def _tmp_name(name, attempt=0):
    # short (a member name may already be NAME_MAX long) and the same on a re-run, which removes
    # a leftover of a killed run
    digest = hashlib.md5(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return ".c2b-%s.part" % digest if not attempt else ".c2b-%s.%d.part" % (digest, attempt)


def _at_temp_name(fd, name, create):
    """``create(tmp)`` at the temp name of ``name`` in ``fd``; returns ``(tmp, result)``. Whatever
    was at that name (a leftover, a planted link) is removed first, never written through; a
    directory there is left alone and the next temp name tried."""
    for attempt in range(8):
        tmp = _tmp_name(name, attempt)
        try:
            return tmp, create(tmp)
        except FileExistsError:
            try:
                os.unlink(tmp, dir_fd=fd)
            except IsADirectoryError:
                continue
            except PermissionError:  # Linux says EPERM for unlink() of a directory
                if stat.S_ISDIR(os.stat(tmp, dir_fd=fd, follow_symlinks=False).st_mode):
                    continue
                raise
            return tmp, create(tmp)
    raise _redo("the site root holds directories at every temp name of %r" % name)


def _unlink_quiet(name, fd):
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        pass


def _put(fd, tmp, name, what):
    """Rename ``tmp`` over ``name`` (both in ``fd``): replaces a file or link there, never a directory."""
    try:
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError as exc:
        _unlink_quiet(tmp, fd)
        if exc.errno in (21, 39):  # EISDIR, ENOTEMPTY
            raise _redo("archive %s %r would replace a directory in the site root" % (what, name))
        raise


def _file_mode(mode):
    """The rule of Python's tar ``data`` filter: no set-id/sticky, no group/other write, owner rw."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _os_error(rel, exc):
    if exc.errno == 28:  # ENOSPC
        return AgentError("the host's disk is full while writing %s: %s" % (rel, exc.strerror),
                          fix="free space on the box host (the restore needs about the backup's tar size), then re-run")
    return AgentError("cannot write %s into the site root: %s" % (rel, exc.strerror or exc),
                      fix="check the SSH user's rights on the site root and its free space, then re-run")


def extract(blocks, target, limit_files=None):
    """Extract every member from ``blocks`` into ``target``; return counters."""
    tree = Tree(target)
    try:
        return _extract(blocks, tree, limit_files)
    finally:
        tree.close()


def _extract(blocks, tree, limit_files):
    counts = {"files": 0, "dirs": 0, "links": 0, "data_bytes": 0, "sql_files": []}
    long_name = long_link = None
    pax = {}
    zero = b"\0" * BLOCK
    while True:
        head = blocks.read(BLOCK)
        if head is None:
            break
        if head == zero:
            continue  # end-of-archive blocks; the vendor's reader skips blank blocks too
        stored = _octal(head[148:156])
        unsigned = sum(head[:148]) + 256 + sum(head[156:])
        if stored != unsigned and stored != unsigned - 256 * sum(1 for b in head[:148] + head[156:] if b > 127):
            raise AgentError("tar header checksum error at %d bytes into the archive" % (blocks.offset - BLOCK),
                             fix="a part is damaged although its gzip CRC was fine; copy the parts again")
        kind = head[156:157]
        size = _octal(head[124:136])
        name = _cstr(head[:100])
        if head[257:265] != b"ustar  \0" and head[345:500].strip(b"\0"):  # POSIX and the vendor's: a prefix
            name = _cstr(head[345:500]) + "/" + name
        linkname = _cstr(head[157:257])
        if kind in (b"L", b"K", b"x", b"g"):
            if size > MAX_HEADER_DATA:
                raise Unsafe("archive header extension of %d bytes after %r: not a site's" % (size, name))
            data = b"".join(bytes(p) for p in _member_data(blocks, size, name))
            if kind == b"L":
                long_name = _cstr(data)
            elif kind == b"K":
                long_link = _cstr(data)
            elif kind == b"x":
                pax = _pax(data)
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if long_link is not None:
            linkname, long_link = long_link, None
        name = pax.pop("path", name)
        linkname = pax.pop("linkpath", linkname)
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise AgentError("archive member %r has a bad pax size %r" % (name, pax["size"][:20]),
                                 fix="a part is damaged although its gzip CRC was fine; copy the parts again")
        pax = {}
        if kind in (b"0", b"\0", b"7") and name.endswith("/"):
            kind = b"5"
        parts = safe_relpath(name)
        tree.trim()
        try:
            _member(tree, blocks, kind, parts, name, linkname, size, head, counts)
        except OSError as exc:
            raise _os_error("/".join(parts) or name, exc)
        if limit_files is not None and counts["files"] >= limit_files:
            raise AgentError("stopped after %d files (test hook)" % counts["files"], kind="transient")
    return counts


def _member(tree, blocks, kind, parts, name, linkname, size, head, counts):
    """Check one member, then (only then) create it."""
    if kind == b"5":
        if parts:
            real, new, st = tree.resolve(parts, follow_last=True)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise _redo("archive directory %r exists in the site root as something else" % name)
            tree.make_dirs(real, new, len(real))
        counts["dirs"] += 1
        return
    if not parts:
        raise Unsafe("archive member %r has an empty path" % name)
    if kind in (b"0", b"\0", b"7"):
        _extract_file(tree, blocks, parts, name, size, _octal(head[100:108]), _octal(head[136:148]))
        counts["files"] += 1
        counts["data_bytes"] += size
        rel = "/".join(parts)
        if rel.startswith("bitrix/backup/") and re.search(r"\.sql(\.\d+)?$", rel):
            counts["sql_files"].append(rel)
        return
    if kind == b"2":
        ups = link_ups(name, linkname)
        real, new = tree.locate_parent(parts)
        if ups > len(real):
            raise Unsafe("archive symlink %r points out of the site root (%r)" % (name, linkname))
        fd = tree.make_parent(parts, real, new)
        tmp, _ = _at_temp_name(fd, parts[-1], lambda t: os.symlink(linkname, t, dir_fd=fd))
        _put(fd, tmp, parts[-1], "symlink")
        tree.links_changed()
        counts["links"] += 1
        return
    if kind == b"1":
        source = safe_relpath(linkname)
        src_real, src_new, st = tree.resolve(source, follow_last=True) if source else ((), None, None)
        if not source or src_new is not None or st is None or not stat.S_ISREG(st.st_mode):
            raise _redo("archive hard link %r -> %r: the target is not a file extracted before it" % (name, linkname))
        real, new = tree.locate_parent(parts)
        fd = tree.make_parent(parts, real, new)
        src_fd = tree.dir_fd(src_real[:-1])
        tmp, _ = _at_temp_name(fd, parts[-1], lambda t: os.link(src_real[-1], t, src_dir_fd=src_fd, dst_dir_fd=fd,
                                                                 follow_symlinks=False))
        _put(fd, tmp, parts[-1], "hard link")
        _unlink_quiet(tmp, fd)  # rename() keeps both names when they already are the same file
        tree.links_changed()
        counts["links"] += 1
        return
    raise Unsafe("archive member %r has type %r (device, fifo …), which a site never needs" % (name, kind))


def _member_data(blocks, size, name):
    """The ``size`` data bytes of a member (its padding read and dropped), as memoryviews."""
    left = size
    try:
        for piece in blocks.pieces((size + BLOCK - 1) // BLOCK * BLOCK):
            if left:
                if len(piece) > left:
                    piece = piece[:left]
                left -= len(piece)
                yield piece
    except _EndOfStream:
        raise AgentError("the archive is truncated: it ends inside %s" % name,
                         fix="a part is missing or truncated: copy it again")


def _extract_file(tree, blocks, parts, name, size, mode, mtime):
    real, new = tree.locate_parent(parts)
    fd = tree.make_parent(parts, real, new)
    final = parts[-1]
    try:
        st = os.stat(final, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise _redo("archive file %r would replace a directory in the site root" % name)
    tmp, out = _at_temp_name(fd, final, lambda t: os.open(t, _O_NEW, 0o600, dir_fd=fd))
    try:
        try:
            for piece in _member_data(blocks, size, name):
                _write_all(out, piece)
            os.fchmod(out, _file_mode(mode))
            os.utime(out, (mtime, mtime))
        finally:
            os.close(out)
        _put(fd, tmp, final, "file")
    except BaseException:
        _unlink_quiet(tmp, fd)  # a half file never takes the real name; the re-run writes it whole
        raise
    if st is not None and stat.S_ISLNK(st.st_mode):
        tree.links_changed()  # a link on the way to later members became a file


def _fingerprint(paths, target, run_key):
    h = hashlib.sha256(("%s\0%s\0" % (os.path.realpath(target), run_key)).encode())
    for p in paths:
        st = os.stat(p)
        h.update(("%s\0%d\0%d\0" % (os.path.basename(p), st.st_size, int(st.st_mtime))).encode())
    return h.hexdigest()


def op_restore(req):
    # one restore at a time: a re-run started while a lost session's agent still works must not
    # extract into the same tree at the same moment
    os.makedirs(os.path.dirname(os.path.abspath(req["state"])), exist_ok=True)
    with open(req["state"] + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise AgentError("another restore is running on this host (%s is locked)" % (req["state"] + ".lock"),
                             fix="wait for it to finish (see its state file), then re-run", kind="transient")
        return _restore(req)


def _first_block(chunks):
    """(the stream's first 512 bytes, an iterator over the rest)."""
    head = b""
    chunks = iter(chunks)
    for chunk in chunks:
        head += chunk
        if len(head) >= BLOCK:
            break
    rest = head[BLOCK:]

    def after():
        if rest:
            yield rest
        yield from chunks

    return head[:BLOCK], after()


def restore_stream(paths, key, names=BACKENDS):
    """(PartStream, the decrypted tar chunks, the backend or None): raises before anything is
    written when the archive is encrypted and cannot be opened."""
    stream = PartStream(paths)
    first, rest = _first_block(stream.chunks())
    backend = open_encryption(first, key, names)
    if backend is None:
        def plain():
            if first:
                yield first
            yield from rest
        return stream, plain(), None
    return stream, backend.stream(rest), backend


def _restore(req):
    paths, target, state_path = req["parts"], req["target"], req["state"]
    key = req.get("key")
    names = BACKENDS
    if req.get("crypto"):
        if req["crypto"] not in BACKENDS:
            raise AgentError("unknown crypto backend %r" % req["crypto"], fix="use one of " + ", ".join(BACKENDS))
        names = (req["crypto"],)
    fingerprint = _fingerprint(paths, target, req.get("run_key") or "")
    state = _read_json(state_path)
    if state.get("fingerprint") == fingerprint and state.get("status") == "done" and not req.get("force"):
        result = dict(state["result"])
        result["skipped"] = True
        return result
    _write_json(state_path, {"fingerprint": fingerprint, "status": "running", "started": time.time(),
                             "attempt": state.get("attempt", 0) + 1 if state.get("fingerprint") == fingerprint else 1})
    started = time.monotonic()
    stream, chunks, backend = restore_stream(paths, key.encode() if key else None, names)
    counts = extract(Blocks(chunks), target, req.get("test_stop_after_files"))
    synced = time.monotonic()
    if hasattr(os, "sync"):
        os.sync()  # the state says "done" only once the files are on disk
    duration = time.monotonic() - started
    result = dict(counts, bytes_in=stream.bytes_in, tar_bytes=stream.bytes_out, encrypted=backend is not None,
                  cipher=backend.cipher if backend else None, crypto=backend.name if backend else None,
                  duration_s=round(duration, 3), sync_s=round(time.monotonic() - synced, 3), skipped=False)
    _write_json(state_path, {"fingerprint": fingerprint, "status": "done", "finished": time.time(), "result": result})
    return result


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- the database through the host's mysql client ------------------------------------------

def _option_value(value):
    return '"%s"' % str(value).replace("\\", "\\\\").replace('"', '\\"')


class Mysql:
    """The host's mysql/mariadb client with credentials in a private option file (never argv)."""

    def __init__(self, db):
        self.db = db
        client = db.get("client") or ""
        self.client = shutil.which(client) if client else (shutil.which("mariadb") or shutil.which("mysql"))
        if not self.client:
            raise AgentError("no mysql/mariadb client on the host", fix="install the MariaDB/MySQL client package")
        fd, self.defaults = tempfile.mkstemp(prefix="c2b-my-", suffix=".cnf")
        with os.fdopen(fd, "w") as f:
            f.write("[client]\nhost=%s\nport=%d\nuser=%s\n" % (_option_value(db.get("host", "localhost")),
                                                               int(db.get("port", 3306)), _option_value(db["user"])))
            if db.get("password"):
                f.write("password=%s\n" % _option_value(db["password"]))
            if db.get("socket"):
                f.write("socket=%s\n" % _option_value(db["socket"]))

    def close(self):
        try:
            os.remove(self.defaults)
        except OSError:
            pass

    def run(self, args, stdin=None, input_text=None, timeout=None):
        cmd = [self.client, "--defaults-extra-file=" + self.defaults, "--default-character-set=utf8mb4"] + args
        proc = subprocess.run(cmd, stdin=stdin, input=input_text.encode() if input_text is not None else None,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            if "Access denied" in err:
                raise AgentError("the database refused the login: %s" % err[:300], kind="auth",
                                 fix="check [box_host.db] user and its password secret")
            if "Can't connect" in err or "Unknown MySQL server host" in err:
                raise AgentError("cannot reach the database: %s" % err[:300],
                                 fix="start MariaDB/MySQL on the host or fix [box_host.db] host/port")
            raise AgentError("mysql failed: %s" % err[:500], fix="read the error; fix the dump or the server")
        return proc.stdout.decode("utf-8", errors="replace")

    def query(self, sql, database=None):
        """Rows of the last result set of ``sql`` (tab-separated batch output, unescaped)."""
        args = ["--batch", "--skip-column-names"]
        if database:
            args.append(database)
        out = self.run(args, input_text=sql)
        return [[_unescape(v) for v in line.split("\t")] for line in out.splitlines()]


def _unescape(value):
    if value == "NULL":
        return None
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}.get(m.group(1), m.group(1)), value)


def _ident(name):
    if not re.match(r"^[A-Za-z0-9_$]{1,64}$", name or ""):
        raise AgentError("database name %r is not a plain identifier" % name, fix="use letters, digits and _")
    return "`%s`" % name


def op_import_db(req):
    db = Mysql(req["db"])
    try:
        database = _ident(req["db"]["database"])
        started = time.monotonic()
        db.query("DROP DATABASE IF EXISTS %s; CREATE DATABASE %s CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
                 % (database, database))
        bytes_in = 0
        for path in req["files"]:
            with open(path, "rb") as f:
                db.run([req["db"]["database"]], stdin=f, timeout=req.get("file_timeout_s"))
            bytes_in += os.path.getsize(path)
        tables = [r[0] for r in db.query("SHOW TABLES", req["db"]["database"])]
        rows = {}
        if req.get("count_rows", True) and tables:
            sql = " UNION ALL ".join("SELECT %s, COUNT(*) FROM `%s`" % (_quote(t), t.replace("`", "``")) for t in tables)
            rows = {r[0]: int(r[1]) for r in db.query(sql, req["db"]["database"])}
        return {"tables": tables, "rows": rows, "bytes": bytes_in, "duration_s": round(time.monotonic() - started, 3)}
    finally:
        db.close()


def _quote(text):
    return "'%s'" % text.replace("\\", "\\\\").replace("'", "\\'")


def op_sql(req):
    db = Mysql(req["db"])
    try:
        return {"results": [db.query(s, req["db"]["database"]) for s in req["statements"]]}
    finally:
        db.close()


def op_write_settings(req):
    """Replace the masked DB settings of the restored site with the box's."""
    root, db = req["target"], req["db"]
    changed = []
    values = {"host": db.get("site_host") or db.get("host", "localhost"), "database": db["database"],
              "login": db["user"], "password": db.get("password") or ""}
    settings = os.path.join(root, "bitrix", ".settings.php")
    if os.path.exists(settings):
        text = open(settings, encoding="utf-8", errors="surrogateescape").read()
        for key, value in values.items():
            text = re.sub(r"('%s'\s*=>\s*)'[^']*'" % key, lambda m, v=value: m.group(1) + _php(v), text, count=1)
        _write_private(settings, text)
        changed.append("bitrix/.settings.php")
    dbconn = os.path.join(root, "bitrix", "php_interface", "dbconn.php")
    if os.path.exists(dbconn):
        text = open(dbconn, encoding="utf-8", errors="surrogateescape").read()
        names = {"DBHost": values["host"], "DBName": values["database"], "DBLogin": values["login"],
                 "DBPassword": values["password"]}
        for var, value in names.items():
            pattern = r"(\$%s\s*=\s*)(['\"])[^'\"]*\2" % var
            if re.search(pattern, text):
                text = re.sub(pattern, lambda m, v=value: m.group(1) + _php(v), text, count=1)
            else:
                text = text.rstrip() + "\n$%s = %s;\n" % (var, _php(value))
        _write_private(dbconn, text)
        changed.append("bitrix/php_interface/dbconn.php")
    masked = []
    for rel in changed:
        if "******" in open(os.path.join(root, rel), encoding="utf-8", errors="surrogateescape").read():
            masked.append(rel)
    return {"changed": changed, "still_masked": masked}


def _php(value):
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "\\'")


def _write_private(path, text):
    tmp = path + ".c2b-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    os.replace(tmp, path)


# --- facts for preflight ------------------------------------------------------------------

def _first_line(cmd, timeout=20):
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout.decode(errors="replace").strip()
    return text.splitlines()[0] if proc.returncode == 0 and text else None


def _existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _listening_ports():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 3 and cols[3] == "0A":  # LISTEN
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return sorted(ports)


def op_facts(req):
    facts = {"time": time.time(), "system": platform.system(), "release": platform.release(),
             "machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/etc/os-release") as f:
            info = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        facts["os"] = info.get("PRETTY_NAME", "").strip('"')
    except OSError:
        facts["os"] = facts["system"]
    try:
        with open("/proc/meminfo") as f:
            mem = dict((l.split(":")[0], l.split(":")[1].strip()) for l in f if ":" in l)
        facts["ram_bytes"] = int(mem["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        facts["ram_bytes"] = None
    disks = {}
    for path in req.get("paths", []):
        where = _existing(path)
        st = os.statvfs(where)
        disks[path] = {"free_bytes": st.f_bavail * st.f_frsize, "device": os.stat(where).st_dev}
    facts["disk"] = disks
    facts["php"] = _first_line(["php", "-r", "echo PHP_VERSION;"]) if shutil.which("php") else None
    facts["ports"] = _listening_ports()
    facts["paths"] = {p: {"exists": os.path.isdir(p), "writable": os.access(_existing(p), os.W_OK)}
                      for p in req.get("paths", [])}
    facts["db_version"] = None
    facts["db_error"] = None
    if req.get("db"):
        try:
            db = Mysql(req["db"])
            try:
                facts["db_version"] = db.query("SELECT VERSION()")[0][0]
                if req["db"].get("database"):  # the restore creates it; the steps after the restore need it
                    facts["db_exists"] = bool(db.query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                                                       "WHERE SCHEMA_NAME = %s" % _quote(req["db"]["database"])))
            finally:
                db.close()
        except AgentError as exc:
            facts["db_error"] = exc.message
    facts["time_after"] = time.time()
    return facts


OPS = {"facts": op_facts, "restore": op_restore, "import_db": op_import_db, "sql": op_sql,
       "write_settings": op_write_settings}


def main():
    try:
        req = json.loads(sys.stdin.read() or "{}")
        op = OPS.get(req.get("op"))
        if op is None:
            raise AgentError("unknown op %r" % req.get("op"), fix="use the agent shipped with this cloud2box")
        result = op(req)
        result["ok"] = True
    except AgentError as exc:
        result = {"ok": False, "error": exc.message, "fix": exc.fix, "kind": "unsafe" if isinstance(exc, Unsafe)
                  else exc.kind}
    except OSError as exc:
        result = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc), "kind": "os",
                  "fix": "check free space and permissions on the host"}
    except Exception as exc:  # a bug or an input nobody foresaw: still one answer, not a traceback
        result = {"ok": False, "error": "the agent failed: %s: %s" % (type(exc).__name__, exc), "kind": "fatal",
                  "fix": "report this error to the cloud2box maintainers with the backup's part names"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
