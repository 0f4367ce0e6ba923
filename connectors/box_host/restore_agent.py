"""cloud2box restore agent: runs ON the box host with the host's python3 (stdlib only, Python ≥ 3.8).

cloud2box uploads this one file over SFTP and runs ``python3 restore_agent.py``; the request is
one JSON object on stdin (secrets travel there, never on the command line), the answer is one
JSON object on the last line of stdout: ``{"ok": true, ...}`` or ``{"ok": false, "error", "fix"}``.

Operations (``"op"``):

- ``facts``: what preflight needs — OS, CPUs, RAM, free disk, PHP/DB versions, listening ports, clock.
- ``restore``: the staged parts, in order, as one stream → gzip members inflated → decrypted
  (the vendor's Blowfish-ECB, key md5(password)) → tar members extracted into the site root.
  Every member's path is checked: absolute names, ``..`` and links pointing out are refused
  before a byte is written for them. Files are written to a temp name and renamed, so a re-run
  after any failure overwrites half-done work and ends in the same state; a finished restore is
  remembered in a state file and not repeated.
- ``import_db``: the dump files, in order, through the host's ``mysql``/``mariadb`` client into a
  database that is dropped and recreated first (so a re-run ends in the same state).
- ``sql``: run statements, return result rows (post-restore checks and fixes).
- ``write_settings``: put the box's DB credentials into the masked ``.settings.php``/``dbconn.php``.
"""

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

BLOCK = 512
SIGNATURE = b"Bitrix Encrypted File"
READ_SIZE = 1 << 20


class AgentError(Exception):
    def __init__(self, message, fix=None, kind="fatal"):
        super().__init__(message)
        self.message, self.fix, self.kind = message, fix, kind


# --- Blowfish (the vendor encrypts with Blowfish-ECB; the host may lack any crypto library) ---

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
    """Blowfish (Schneier 1993) in ECB mode, big-endian words, as mcrypt/OpenSSL implement it."""

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
            left, right = self._encrypt(left, right)
            self.p[i], self.p[i + 1] = left, right
        for box in self.s:
            for i in range(0, 256, 2):
                left, right = self._encrypt(left, right)
                box[i], box[i + 1] = left, right
        self._fast = None
        try:  # the host's python may have the cryptography package: 100x faster
            from cryptography.hazmat.primitives.ciphers import Cipher, modes
            try:
                from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish as _BF  # noqa: N814
            except ImportError:  # cryptography < 43 (e.g. Debian 12's python3-cryptography)
                from cryptography.hazmat.primitives.ciphers.algorithms import Blowfish as _BF  # noqa: N814
            self._fast = Cipher(_BF(bytes(key)), modes.ECB())
        except Exception:  # any ImportError/UnsupportedAlgorithm: the pure-Python path works everywhere
            self._fast = None

    def _encrypt(self, left, right):
        p, s0, s1, s2, s3 = self.p, self.s[0], self.s[1], self.s[2], self.s[3]
        for i in range(16):
            left ^= p[i]
            right ^= ((((s0[left >> 24] + s1[(left >> 16) & 255]) & 0xFFFFFFFF) ^ s2[(left >> 8) & 255])
                      + s3[left & 255]) & 0xFFFFFFFF
            left, right = right, left
        left, right = right, left
        return left ^ p[17], right ^ p[16]

    def _decrypt(self, left, right):
        p, s0, s1, s2, s3 = self.p, self.s[0], self.s[1], self.s[2], self.s[3]
        for i in range(17, 1, -1):
            left ^= p[i]
            right ^= ((((s0[left >> 24] + s1[(left >> 16) & 255]) & 0xFFFFFFFF) ^ s2[(left >> 8) & 255])
                      + s3[left & 255]) & 0xFFFFFFFF
            left, right = right, left
        left, right = right, left
        return left ^ p[0], right ^ p[1]

    def decrypt(self, data):
        if self._fast is not None:
            d = self._fast.decryptor()
            return d.update(bytes(data)) + d.finalize()
        out = bytearray(len(data))
        for i in range(0, len(data) - 7, 8):
            left = int.from_bytes(data[i:i + 4], "big")
            right = int.from_bytes(data[i + 4:i + 8], "big")
            left, right = self._decrypt(left, right)
            out[i:i + 4] = left.to_bytes(4, "big")
            out[i + 4:i + 8] = right.to_bytes(4, "big")
        return bytes(out)

    def encrypt(self, data):
        out = bytearray(len(data))
        for i in range(0, len(data) - 7, 8):
            left, right = self._encrypt(int.from_bytes(data[i:i + 4], "big"), int.from_bytes(data[i + 4:i + 8], "big"))
            out[i:i + 4] = left.to_bytes(4, "big")
            out[i + 4:i + 8] = right.to_bytes(4, "big")
        return bytes(out)


# --- the parts as one tar stream ----------------------------------------------------------

class PartStream:
    """Yields the uncompressed tar bytes of the parts, in order; checks each part's gzip
    members (CRC, length: zlib does) and its BX size field; names the part on any error."""

    def __init__(self, paths):
        self.paths = paths
        self.bytes_in = 0
        self.bytes_out = 0

    def chunks(self):
        for number, path in enumerate(self.paths):
            name = os.path.basename(path)
            try:
                f = open(path, "rb")
            except OSError as exc:
                raise AgentError("part %s cannot be read: %s" % (name, exc.strerror),
                                 fix="stage the part again (re-run the step)")
            with f:
                head = f.read(22)
                expected = None
                if len(head) >= 22 and head[:2] == b"\x1f\x8b" and head[3] & 4 and head[16:18] == b"BX":
                    expected = int.from_bytes(head[18:22], "little")
                f.seek(0)
                got = 0
                d = zlib.decompressobj(31)
                started = False
                try:
                    while True:
                        raw = f.read(READ_SIZE)
                        if not raw:
                            break
                        self.bytes_in += len(raw)
                        while raw:
                            out = d.decompress(raw)
                            started = True
                            if out:
                                got += len(out)
                                self.bytes_out += len(out)
                                yield out
                            if d.eof:
                                raw = d.unused_data
                                d = zlib.decompressobj(31)
                                started = False
                            else:
                                raw = b""
                except zlib.error as exc:
                    raise AgentError("part %s (number %d) is corrupt: %s" % (name, number, exc),
                                     fix="copy a good %s again (from the mirror or the download), then re-run" % name)
                if started and not d.eof:
                    raise AgentError("part %s is truncated (its last gzip member ends early)" % name,
                                     fix="copy the whole %s again, then re-run" % name)
                if expected is not None and got != expected:
                    raise AgentError("part %s holds %d tar bytes, its header says %d" % (name, got, expected),
                                     fix="copy a good %s again, then re-run" % name)


class TarBlocks:
    """Reads a byte stream in 512-byte blocks; decrypts when the first block says so."""

    def __init__(self, chunks, key):
        self._chunks = chunks
        self._buf = bytearray()
        self._pos = 0
        self._key = key
        self._cipher = None
        self.encrypted = False
        self._first = True

    def _fill(self, n):
        while len(self._buf) - self._pos < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return False
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            self._buf += chunk
        return True

    def start(self):
        """Read the first block: an encrypted archive with a wrong or missing password fails here,
        before anything is written."""
        if self._first:
            self._first = False
            self._check_encryption()

    def read(self, n):
        """Exactly ``n`` bytes (a multiple of 512) or None at the end of the stream."""
        self.start()
        if not self._fill(n):
            rest = len(self._buf) - self._pos
            if rest == 0:
                return None
            raise AgentError("the tar stream ends inside a block (%d stray bytes)" % rest,
                             fix="the last part is incomplete: copy it again")
        data = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        if self._cipher is not None:
            data = self._cipher.decrypt(data)
        return data

    def _check_encryption(self):
        if not self._fill(BLOCK):
            return
        block = bytes(self._buf[self._pos:self._pos + BLOCK])
        if block[100:190].rstrip(b"\0").strip() != SIGNATURE:
            return
        self.encrypted = True
        if block[190:200].rstrip(b"\0").strip() != b"1.0":
            raise AgentError("encrypted archive of an unknown version %r" % block[190:200].rstrip(b"\0"),
                             fix="restore this backup with the vendor's restore.php")
        if not self._key:
            raise AgentError("the backup is encrypted and no password was given",
                             fix="set the backup's encryption password in [box_host] archive_password_secret")
        cipher = Blowfish(self._key)
        if cipher.decrypt(block[256:512]) != block[:256]:
            raise AgentError("wrong password for the encrypted backup (its first block does not decrypt "
                             "to its signature); nothing was written", kind="auth",
                             fix="check the encryption password set when the backup was made")
        self._pos += BLOCK  # the signature block is not part of the tar
        self._cipher = cipher


def _octal(field):
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if field[:1] == b"\x80":  # GNU base-256 for big sizes
        return int.from_bytes(field[1:], "big")
    return int(field or b"0", 8)


def _cstr(field):
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Unsafe(AgentError):
    pass


def safe_relpath(name):
    """The member's path relative to the target, or raise :class:`Unsafe`."""
    if name.startswith("./"):
        name = name[2:]
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name) or "\\" in name:
        raise Unsafe("archive member %r has an absolute path" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Unsafe("archive member %r climbs out with '..'" % name)
    if not parts:
        return ""
    return "/".join(parts)


def _inside(root, path):
    return path == root or path.startswith(root + os.sep)


def _parent_inside(root, dest):
    parent = os.path.realpath(os.path.dirname(dest))
    if not _inside(root, parent):
        raise Unsafe("archive member would be written through a link to %s, outside the site root" % parent)


def extract(blocks, target, limit_files=None):
    """Extract every member from ``blocks`` into ``target``; return counters."""
    root = os.path.realpath(target)
    os.makedirs(root, exist_ok=True)
    files = dirs = links = 0
    data_bytes = 0
    sql = []
    long_name = long_link = None
    pax = {}
    while True:
        head = blocks.read(BLOCK)
        if head is None:
            break
        if head == b"\0" * BLOCK:
            continue  # end-of-archive blocks; the vendor's reader skips blank blocks too
        stored = _octal(head[148:156])
        if stored != sum(head[:148]) + 256 + sum(head[156:]):
            raise AgentError("tar header checksum error at %d bytes into the archive" % blocks_offset(blocks),
                             fix="a part is damaged although its gzip CRC was fine; copy the parts again")
        kind = head[156:157]
        size = _octal(head[124:136])
        name = _cstr(head[:100])
        if head[257:262] == b"ustar" and head[345:500].strip(b"\0"):
            name = _cstr(head[345:500]) + "/" + name
        linkname = _cstr(head[157:257])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"L", b"K", b"x", b"g"):
            data = blocks.read(padded)[:size] if padded else b""
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"K":
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax(data)
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if long_link is not None:
            linkname, long_link = long_link, None
        name = pax.pop("path", name)
        linkname = pax.pop("linkpath", linkname)
        pax = {}
        mode = _octal(head[100:108]) & 0o777
        mtime = _octal(head[136:148])
        rel = safe_relpath(name)
        if name.endswith("/") and kind in (b"0", b"\0"):
            kind = b"5"
        dest = os.path.join(root, rel) if rel else root
        if kind == b"5":
            if rel:
                os.makedirs(dest, exist_ok=True)
                if not _inside(root, os.path.realpath(dest)):
                    raise Unsafe("archive directory %r resolves outside the site root" % name)
            dirs += 1
            continue
        if not rel:
            raise Unsafe("archive member %r has an empty path" % name)
        if kind in (b"0", b"\0", b"7"):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _parent_inside(root, dest)
            tmp = dest + ".c2b-part"
            try:
                with open(tmp, "wb") as out:
                    left = size
                    while left > 0:
                        step = min(padded, 64 * BLOCK)
                        chunk = blocks.read(step)
                        if chunk is None:
                            raise AgentError("the archive ends inside %s" % name, fix="a part is missing or short")
                        padded -= step
                        piece = chunk[:left]
                        out.write(piece)
                        left -= len(piece)
            except BaseException:
                _remove(tmp)  # a half file never takes the real name; the re-run writes it whole
                raise
            os.chmod(tmp, mode or 0o644)
            os.utime(tmp, (mtime, mtime))
            os.replace(tmp, dest)
            files += 1
            data_bytes += size
            if rel.startswith("bitrix/backup/") and re.search(r"\.sql(\.\d+)?$", rel):
                sql.append(rel)
            if limit_files is not None and files >= limit_files:
                raise AgentError("stopped after %d files (test hook)" % files, kind="transient")
            continue
        if kind == b"2":  # symlink: only when it stays inside
            if os.path.isabs(linkname):
                raise Unsafe("archive symlink %r points to the absolute path %r" % (name, linkname))
            resolved = os.path.normpath(os.path.join(os.path.dirname(os.path.join(root, rel)), linkname))
            if not _inside(root, resolved):
                raise Unsafe("archive symlink %r points out of the site root (%r)" % (name, linkname))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _parent_inside(root, dest)
            if os.path.lexists(dest):
                os.remove(dest)
            os.symlink(linkname, dest)
            links += 1
            continue
        if kind == b"1":  # hard link to an earlier member
            source = os.path.join(root, safe_relpath(linkname))
            if not _inside(root, os.path.realpath(source)):
                raise Unsafe("archive hard link %r points out of the site root (%r)" % (name, linkname))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _parent_inside(root, dest)
            if os.path.lexists(dest):
                os.remove(dest)
            os.link(source, dest)
            links += 1
            continue
        raise Unsafe("archive member %r has type %r (device, fifo …), which a site never needs" % (name, kind))
    return {"files": files, "dirs": dirs, "links": links, "data_bytes": data_bytes, "sql_files": sql}


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def blocks_offset(blocks):
    return getattr(blocks, "_pos", 0)


def _pax(data):
    out = {}
    while data:
        try:
            length = int(data.split(b" ", 1)[0])
        except ValueError:
            break
        record, data = data[:length], data[length:]
        key, _, value = record.split(b" ", 1)[1].rstrip(b"\n").partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
    return out


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


def _restore(req):
    paths, target, state_path = req["parts"], req["target"], req["state"]
    key = req.get("key")
    fingerprint = _fingerprint(paths, target, req.get("run_key") or "")
    state = _read_json(state_path)
    if state.get("fingerprint") == fingerprint and state.get("status") == "done" and not req.get("force"):
        result = dict(state["result"])
        result["skipped"] = True
        return result
    _write_json(state_path, {"fingerprint": fingerprint, "status": "running", "started": time.time(),
                             "attempt": state.get("attempt", 0) + 1 if state.get("fingerprint") == fingerprint else 1})
    started = time.monotonic()
    stream = PartStream(paths)
    blocks = TarBlocks(stream.chunks(), key.encode() if key else None)
    blocks.start()
    counts = extract(blocks, target, req.get("test_stop_after_files"))
    if hasattr(os, "sync"):
        os.sync()  # the state says "done" only once the files are on disk
    duration = time.monotonic() - started
    result = dict(counts, bytes_in=stream.bytes_in, tar_bytes=stream.bytes_out, encrypted=blocks.encrypted,
                  duration_s=round(duration, 3), skipped=False)
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
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
