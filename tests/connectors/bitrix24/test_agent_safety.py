"""The restore agent never creates, writes or leaves anything outside the site root, whatever the
member sequence (issue 11, point 4).

Hypothesis generates member sequences (files, directories, symlinks, hard links, long and UTF-8
names, ``.``/``..``, absolute paths, chains of links, members replacing earlier links and
directories, links planted at the agent's temp-file names), Python's tarfile writes them as a
GNU tar, :func:`sandbox.backup_maker.write_parts` wraps that in vendor parts, and the agent
restores them into a site root deep inside a temp dir full of bait. After every restore:

- nothing outside the site root changed (the whole temp dir is snapshotted around it);
- no link inside resolves outside, no file inside shares its inode with one outside;
- second opinion, Python's tar ``data`` filter (PEP 706, ``errorlevel=2``) on the same tar in its
  own sandbox: where it extracts the whole sequence, the agent's tree is the same (types, bytes,
  link targets, modes, mtimes). Where they may differ, by design:

  * the agent is stricter: it refuses absolute member names (tarfile strips the ``/``), ``..`` in
    member names (tarfile resolves them) and symlink targets with ``..`` after a name (tarfile
    checks them only against the tree of the moment, which later members can change);
  * tarfile writes a file member through an existing link, falls back to copying where a link
    cannot be made, hard-links a symlink itself (link(2) does not follow: the copy's relative
    target means something else where it lands, and is not checked — a way out of the root with
    this Python's filter), and ignores a directory member over a file or link; the agent replaces the
    link (as GNU tar does) or stops with a clear error. A member at the agent's temp name of a
    later member in the same directory is removed by the agent. Such sequences are judged by
    the invariants only (the judge is instrumented to say when it did any of this).

  Where the data filter refuses a member (and had not done any of the above), the agent refuses
  too.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.bitrix24.agent import restore_agent as agent
from sandbox.backup_maker import write_parts

MTIME = 1_700_000_000
OUT = "@OUT"  # replaced by the absolute path of the bait directory outside the site root
NAMES = ["a", "b", "d", "s", "x", agent._tmp_name("a"), agent._tmp_name("x"), "L" * 150, "ü" * 60]


@dataclass(frozen=True)
class M:
    kind: str  # file | dir | sym | hard
    name: str
    target: str = ""
    data: bytes = b""
    mode: int = 0o644

    def __repr__(self) -> str:
        extra = f" -> {self.target!r}" if self.kind in ("sym", "hard") else ""
        return f"{self.kind}:{self.name!r}{extra}"


def weighted(*pairs):
    """One of the strategies, each ``weight`` times as likely."""
    return st.one_of(*[strategy for weight, strategy in pairs for _ in range(weight)])


def members_of(path, link_target, hard_target):
    return weighted(
        (4, st.builds(M, st.just("file"), path, data=st.binary(max_size=1500),
                      mode=st.sampled_from([0o644, 0o755, 0o600, 0o4777, 0o666, 0o700, 0o444]))),
        (2, st.builds(M, st.just("dir"), path)),
        (2, st.builds(M, st.just("sym"), path, target=link_target)),
        (1, st.builds(M, st.just("hard"), path, target=hard_target)))


plain_path = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map("/".join)
plain_target = st.lists(st.sampled_from(["a", "b", "d", "s", "x"]), min_size=1, max_size=3).map("/".join)
up_target = st.tuples(st.integers(1, 3), plain_target | st.just("")).map(lambda t: "../" * t[0] + t[1])
# sequences a site could hold: plain names, links that stay inside or climb too far
clean = members_of(plain_path, weighted((2, plain_target), (1, up_target), (1, st.sampled_from([".", "./a"]))),
                   plain_target)
# anything: '.', '..', absolute names and targets, links down-and-up
component = weighted((4, st.sampled_from(NAMES)), (1, st.sampled_from(["..", "."])))
any_path = weighted((6, st.lists(component, min_size=1, max_size=4).map("/".join)),
                    (1, plain_path.map(lambda p: "./" + p)), (1, plain_path.map(lambda p: f"{OUT}/{p}")))
any_target = weighted(
    (2, plain_target), (2, up_target),
    (2, st.lists(st.sampled_from(["..", ".", "a", "b", "d", "s", "x", ""]), min_size=1, max_size=4).map("/".join)),
    (1, st.sampled_from([f"{OUT}/victim", OUT, "/etc"])))
hostile = members_of(any_path, any_target, weighted((3, plain_target), (1, any_path)))


@st.composite
def sequences(draw):
    members = draw(st.one_of(st.lists(clean, min_size=1, max_size=8),
                             st.lists(weighted((3, clean), (1, hostile)), min_size=1, max_size=8)))
    for i, m in enumerate(members):  # most hard links name a file extracted before them
        files = [f.name for f in members[:i] if f.kind == "file"]
        if m.kind == "hard" and files and draw(st.integers(0, 3)):
            members[i] = M("hard", m.name, target=draw(st.sampled_from(files)))
    return members


def tar_of(members: list[M], outside: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name.replace(OUT, outside))
            info.mtime, info.mode = MTIME, m.mode
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[m.kind]
            info.mode = 0o755 if m.kind == "dir" else m.mode
            info.linkname = m.target.replace(OUT, outside)
            tar.addfile(info)
    return buf.getvalue()


def snapshot(top: Path, skip: Path) -> dict[str, tuple]:
    """Everything under ``top`` but ``skip``: path → (type, content/target, mode)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip.parent and skip.name in dirnames:
            dirnames.remove(skip.name)
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            s = p.lstat()
            if stat.S_ISLNK(s.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISDIR(s.st_mode):
                out[str(p)] = ("dir", stat.S_IMODE(s.st_mode))
            else:
                out[str(p)] = ("file", p.read_bytes(), stat.S_IMODE(s.st_mode), s.st_nlink)
    return out


def site_tree(root: Path, modes: bool = True) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """(rel path → what it is, groups of hard-linked names); file modes only if ``modes`` (tarfile
    chmods a hard link's inode with the link member's mode, GNU tar and the agent do not)."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            s = p.lstat()
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), s.st_mtime,
                            stat.S_IMODE(s.st_mode) if modes else None)
                inodes.setdefault(s.st_ino, set()).add(rel)
    return out, {frozenset(g) for g in inodes.values() if len(g) > 1}


def leads_to(path: str) -> str | None:
    """Where ``path`` leads, following links as the kernel does and lexically past the first
    missing component (this Python's os.path.realpath answers "/" for some loops); None: a loop."""
    resolved, hops = "/", 0
    todo = list(reversed(path.split("/")))
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = "/"
            todo.extend(reversed(target.split("/")))
        else:
            resolved = candidate
    return resolved


def assert_contained(top: Path, root: Path, before: dict) -> None:
    assert snapshot(top, root) == before, "something outside the site root changed"
    outside_inodes = {Path(p).lstat().st_ino for p, v in before.items() if v[0] == "file"}
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                real = leads_to(p)
                assert real is None or real == real_root or real.startswith(real_root + os.sep), \
                    f"{p} -> {os.readlink(p)} leads out"
            elif os.path.isfile(p):
                assert os.lstat(p).st_ino not in outside_inodes, f"{p} is hard-linked to a file outside"


class Judge(tarfile.TarFile):
    """tarfile with the data filter, saying where it did what the agent does not do by design."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.diverged: list[str] = []

    def makefile(self, tarinfo, targetpath):
        if os.path.lexists(targetpath):
            s = os.lstat(targetpath)
            if stat.S_ISLNK(s.st_mode) or s.st_nlink > 1:
                self.diverged.append(f"writes {tarinfo.name} through a link")
        super().makefile(tarinfo, targetpath)

    def makedir(self, tarinfo, targetpath):
        if os.path.lexists(targetpath) and (os.path.islink(targetpath) or not os.path.isdir(targetpath)):
            self.diverged.append(f"ignores directory {tarinfo.name} over a non-directory")
        super().makedir(tarinfo, targetpath)

    def makelink(self, tarinfo, targetpath):
        if tarinfo.islnk() and os.path.islink(tarinfo._link_target):
            # link(2) does not follow: the new name is that symlink moved elsewhere, its target
            # never checked again (the agent links the file the symlink leads to, or refuses)
            self.diverged.append(f"hard-links the symlink {tarinfo.linkname}")
        super().makelink(tarinfo, targetpath)

    def _find_link_target(self, tarinfo):
        # its copy fallback; stop there (it can recurse without end on a link to itself)
        self.diverged.append(f"copies instead of linking {tarinfo.name}")
        raise tarfile.ExtractError("tarfile would copy a link target")


def judge(tar: bytes, dest: Path) -> tuple[str, list[str]]:
    """('ok' | 'refused' | 'error', divergences) of tarfile's data filter on ``tar``."""
    dest.mkdir(parents=True)
    j = Judge(fileobj=io.BytesIO(tar), mode="r", errorlevel=2)
    try:
        j.extractall(dest, filter="data")
        return "ok", j.diverged
    except tarfile.FilterError:
        return "refused", j.diverged
    except (OSError, tarfile.TarError, KeyError):
        return "error", j.diverged
    finally:
        j.close()


def shadows_a_temp_name(members: list[M]) -> bool:
    """Does a file or link member sit at the agent's temp name of a later member of the same
    directory? The agent removes what is at its temp name (a leftover of a killed run, or a
    planted link); a directory there it leaves alone."""
    for i, m in enumerate(members):
        if m.kind == "dir":
            continue
        head, _, last = m.name.rpartition("/")
        for later in members[i + 1:]:
            later_head, _, later_last = later.name.rpartition("/")
            if later_head == head and last == agent._tmp_name(later_last):
                return True
    return False


def stricter(members: list[M]) -> bool:
    """Does the sequence hold a member the agent refuses by its own, stricter rules?"""
    for m in members:
        name = m.name.replace(OUT, "/out")
        if name.startswith("/") or ".." in name.split("/"):
            return True
        if m.kind == "hard" and (m.target.startswith(OUT) or ".." in m.target.split("/")):
            return True
        if m.kind == "sym":
            try:
                agent.link_ups(m.name, m.target.replace(OUT, "/out"))
            except agent.Unsafe:
                return True
    return False


def restore(parts_dir: Path, tar: bytes, target: Path, *, part_size: int, member_step: int) -> agent.AgentError | None:
    parts = write_parts(parts_dir, "site.tar.gz", [tar[i:i + 4096] for i in range(0, len(tar), 4096)],
                        part_size=part_size, member_step=member_step)
    stream, chunks, backend = agent.restore_stream([str(p.path) for p in parts], None)
    try:
        agent.extract(agent.Blocks(chunks), str(target))
    except agent.AgentError as exc:
        return exc
    return None


def sandbox(tmp: Path) -> tuple[Path, Path, Path]:
    """(top, site root, bait dir): the site root ten levels deep, bait around it at every level."""
    top = tmp / "w"
    outside = top / "outside"
    outside.mkdir(parents=True)
    (outside / "victim").write_bytes(b"victim")
    (outside / "a").mkdir()
    deep = top.joinpath(*"123456789")
    deep.mkdir(parents=True)
    for level in [top, *deep.parents][:10]:
        if top in (level, *level.parents):
            (level / "bait").write_bytes(b"bait")
    return top, deep / "site", outside


ATTACKS = [
    # the chain: each link is "inside" read as text, together they lead out
    [M("dir", "d"), M("sym", "d/s", ".."), M("sym", "x", "d/s/.."), M("file", "x/evil", data=b"pwned")],
    # a link that is inside when made and points out once a later member exists
    [M("sym", "a", "b/d/../.."), M("dir", "d"), M("sym", "b", "."), M("file", "a/evil", data=b"pwned")],
    # a link planted at the agent's temp name of a later file
    [M("dir", "d"), M("sym", agent._tmp_name("x"), "d"), M("file", "x", data=b"data")],
    [M("sym", agent._tmp_name("x"), f"{OUT}/victim"), M("file", "x", data=b"data")],
    # replace a directory by a link, a link by a file, a file by a link
    [M("dir", "a/b"), M("sym", "a", "d"), M("file", "a/b/f", data=b"1")],
    [M("sym", "a", "d"), M("file", "a", data=b"1"), M("sym", "a", "x"), M("file", "a/f", data=b"2")],
    # hard links: to a file through a link, out, to a directory, to nothing
    [M("file", "d/f", data=b"1"), M("sym", "l", "d"), M("hard", "h", "l/f"), M("hard", "h2", "../outside/victim")],
    [M("dir", "d"), M("hard", "h", "d")],
    [M("hard", "h", "nothing")],
    # directories created before a refusal would be left behind
    [M("sym", "new/deep/l", "../../../x")],
    [M("file", f"{OUT}/evil", data=b"pwned")],
    [M("sym", "l", OUT), M("file", "l/victim", data=b"pwned")],
]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=sequences(), part_size=st.sampled_from([512, 1024, 4096, 1 << 20]),
       member_step=st.sampled_from([512, 1536, 1 << 20]))
@example(members=ATTACKS[0], part_size=1024, member_step=512)
@example(members=ATTACKS[1], part_size=4096, member_step=1536)
@example(members=ATTACKS[2], part_size=512, member_step=512)
@example(members=ATTACKS[3], part_size=1 << 20, member_step=1 << 20)
@example(members=ATTACKS[4], part_size=1024, member_step=512)
@example(members=ATTACKS[5], part_size=1024, member_step=512)
@example(members=ATTACKS[6], part_size=1024, member_step=512)
@example(members=ATTACKS[7], part_size=1024, member_step=512)
@example(members=ATTACKS[8], part_size=1024, member_step=512)
@example(members=ATTACKS[9], part_size=1024, member_step=512)
@example(members=ATTACKS[10], part_size=1024, member_step=512)
@example(members=ATTACKS[11], part_size=1024, member_step=512)
def test_restore_stays_inside_and_agrees_with_the_data_filter(members, part_size, member_step):
    with tempfile.TemporaryDirectory(prefix="c2b-safety-") as tmp:
        tmp = Path(tmp)
        top, root, outside = sandbox(tmp)
        tar = tar_of(members, str(outside))
        before = snapshot(top, root)
        error = restore(tmp / "parts", tar, root, part_size=part_size, member_step=member_step)
        assert_contained(top, root, before)
        # second opinion, in its own sandbox
        ref_top, ref_root, ref_outside = sandbox(tmp / "ref")
        verdict, diverged = judge(tar_of(members, str(ref_outside)), ref_root)
        if diverged or shadows_a_temp_name(members):
            return  # judged by the invariants alone (see the module docstring)
        if verdict == "ok":
            if error is not None:
                assert stricter(members), f"tarfile extracts it all, the agent stops: {error.message}"
            else:
                modes = not any(m.kind == "hard" for m in members)
                assert site_tree(root, modes) == site_tree(ref_root, modes)
        elif verdict == "refused":
            assert error is not None, "tarfile's data filter refuses a member the agent extracted"


def test_the_known_attacks_are_refused_with_nothing_outside(tmp_path):
    """The issue's attacks, one by one: each stops the restore (or is made harmless), nothing
    leaves the root, and no directory of a refused member exists."""
    for number, members in enumerate(ATTACKS):
        top, root, outside = sandbox(tmp_path / str(number))
        before = snapshot(top, root)
        error = restore(tmp_path / f"parts{number}", tar_of(members, str(outside)), root, part_size=1024,
                        member_step=512)
        assert_contained(top, root, before)
        names = {m.name for m in members}
        if "x/evil" in names or "a/evil" in names or "l/victim" in names:
            assert isinstance(error, agent.Unsafe), (number, error)
        if number == 2:  # the link planted at the temp name was removed, not written through
            assert error is None and (root / "x").read_bytes() == b"data" and not (root / "x").is_symlink()
            assert not os.path.lexists(root / agent._tmp_name("x")) and not list((root / "d").iterdir())
        if number == 9:
            assert isinstance(error, agent.Unsafe) and not (root / "new").exists()


def test_a_link_already_in_the_site_root_is_never_written_through(tmp_path):
    """Links that were in the site root before the restore (not from the archive): one at the
    agent's temp name of a member, one pointing out that a member path goes through."""
    top, root, outside = sandbox(tmp_path)
    root.mkdir()
    os.symlink(outside / "victim", root / agent._tmp_name("index.php"))
    os.symlink(outside, root / "upload")
    before = snapshot(top, root)
    error = restore(tmp_path / "p1", tar_of([M("file", "index.php", data=b"<?php")], str(outside)), root,
                    part_size=1024, member_step=512)
    assert error is None and (root / "index.php").read_bytes() == b"<?php"
    assert not os.path.lexists(root / agent._tmp_name("index.php"))
    assert snapshot(top, root) == before
    error = restore(tmp_path / "p2", tar_of([M("file", "upload/victim", data=b"pwned")], str(outside)), root,
                    part_size=1024, member_step=512)
    assert error is not None and "was in the site root before" in error.message and "upload ->" in error.message
    assert "remove it from the site root" in error.fix
    os.symlink("../../..", root / "up")
    error = restore(tmp_path / "p3", tar_of([M("file", "up/bait", data=b"pwned")], str(outside)), root,
                    part_size=1024, member_step=512)
    assert error is not None and "through the link up -> ../../.." in error.message
    assert snapshot(top, root) == before
    assert snapshot(top, root) == before and (outside / "victim").read_bytes() == b"victim"
