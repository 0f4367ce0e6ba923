"""Benchmark of the box-host SSH path against a real OpenSSH sshd on loopback (this machine).

1. Upload: :meth:`connectors.ssh.RemoteHost.put` (paramiko SFTP, pipelined) vs OpenSSH ``scp`` of
   the same file in the same run, alternating, best of N each. Target: ours ≥ 0.8 × scp.
2. Restore: a multi-part sandbox backup staged and restored by the host agent; MB of archive per
   second (and tar MB/s), next to ``cat parts | tar xz`` of the same parts as the floor to compare.

Usage: ``python bench/ssh_bench.py [--size-mib 1024] [--restore-mib 256] [--rounds 2] [--out bench/RESULTS-ssh.md]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors import platforms  # noqa: E402
from connectors.box_host import BoxDbSettings, BoxHost, BoxHostSection, LocalPart  # noqa: E402
from connectors.ssh import RemoteHost  # noqa: E402
from sandbox.backup_maker import make_backup  # noqa: E402
from tests.connectors.ssh.sshd import start_sshd  # noqa: E402

PLATFORM = platforms.default()
MiB = 2**20


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def upload(sshd, src: Path, rounds: int) -> dict:
    size = src.stat().st_size
    dest = sshd.root / "upload.bin"
    times: dict[str, list[float]] = {"auto": [], "paramiko": [], "scp": []}
    hosts = {c: RemoteHost(sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                           known_hosts=sshd.known_hosts, sftp_client=c) for c in ("auto", "paramiko")}
    scp_cmd = ["scp", "-q", "-i", str(sshd.key_file), "-o", f"UserKnownHostsFile={sshd.known_hosts}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-P", str(sshd.port), str(src),
               f"{sshd.username}@{sshd.host}:{dest}"]
    for h in hosts.values():
        h.run("true")  # connect and authenticate outside the timing (paramiko stats the file over it)
    try:
        for _ in range(rounds):
            for client, h in hosts.items():
                dest.unlink(missing_ok=True)
                times[client].append(_timed(lambda: h.put(src, str(dest), resume=False)))
                assert dest.stat().st_size == size
            dest.unlink()
            times["scp"].append(_timed(lambda: subprocess.run(scp_cmd, check=True, timeout=900)))
            assert dest.stat().st_size == size
    finally:
        for h in hosts.values():
            h.close()
    dest.unlink(missing_ok=True)
    return {"size": size, **times, "transport": remote_cipher(sshd)}


def remote_cipher(sshd) -> str:
    with RemoteHost(sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                    known_hosts=sshd.known_hosts) as h:
        h.run("true")
        t = h._client.get_transport()
        return t.local_cipher if "gcm" in t.local_cipher else f"{t.local_cipher} / {t.local_mac}"


def restore(sshd, work: Path, size_mib: int) -> dict:
    made = make_backup(work / "vendor", total_bytes=size_mib * MiB, part_size=64 * MiB, seed=7)
    section = BoxHostSection(host=sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                             known_hosts=sshd.known_hosts, site_root=str(work / "www"),
                             staging_dir=str(work / "staging"), python="/usr/bin/python3",
                             db=BoxDbSettings(password_secret=None, **PLATFORM.restore.box_defaults["db"]))
    host = BoxHost(section, RemoteHost.from_settings(section), agent_source=PLATFORM.restore.agent_source)
    parts = [LocalPart(p.name, p.path, p.size, p.sha256) for p in made.parts]
    with host.remote:
        stage = host.stage(parts)
        wall = _timed(lambda: host.restore_files([p.name for p in made.parts], force=True))
        result = host.restore_files([p.name for p in made.parts], force=True)
    tar_dir = work / "tar"
    tar_dir.mkdir()
    names = " ".join(str(Path(section.staging_dir) / p.name) for p in made.parts)
    tar_s = _timed(lambda: subprocess.run(f"cat {names} | tar xzf - -C {tar_dir}", shell=True, check=True))
    return {"archive": made.total_size, "tar": made.tar_size, "parts": len(made.parts), "stage_s": stage.duration_s,
            "agent_s": result["duration_s"], "wall_s": wall, "tar_s": tar_s, "files": result["files"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--restore-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-ssh.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="c2b-ssh-bench-") as tmp:
        tmp = Path(tmp)
        sshd = start_sshd(tmp / "sshd")
        try:
            src = tmp / "blob.bin"
            _random_file(src, args.size_mib * MiB)
            up = upload(sshd, src, args.rounds)
            src.unlink()
            rs = restore(sshd, tmp / "restore", args.restore_mib)
        finally:
            sshd.stop()
    best = {k: min(up[k]) for k in ("auto", "paramiko", "scp")}
    mbps = lambda n, s: n / MiB / s  # noqa: E731
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    import paramiko

    def row(label: str, key: str) -> str:
        return (f"| {label} | {', '.join(f'{s:.2f}' for s in up[key])} | {mbps(up['size'], best[key]):.1f} | "
                f"{best['scp'] / best[key]:.2f} |")

    lines = [
        "# SSH benchmark (box host)", "",
        f"Command: `python bench/ssh_bench.py --size-mib {args.size_mib} --restore-mib {args.restore_mib} "
        f"--rounds {args.rounds}`  ",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, paramiko {paramiko.__version__}, "
        f"{ssh_version}; real sshd on 127.0.0.1 (this machine), client in this process  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
        f"## Upload of {args.size_mib} MiB (random bytes), best of {args.rounds}, alternating", "",
        "| client | seconds (each round) | MB/s (best) | / scp |", "|---|---|---|---|",
        row("cloud2box RemoteHost.put, sftp_client = auto (OpenSSH sftp here: key login, strict host key)", "auto"),
        row(f"cloud2box RemoteHost.put, sftp_client = paramiko (pipelined; {up['transport']})", "paramiko"),
        row("OpenSSH scp", "scp"), "",
        f"default (auto) / scp: **{best['scp'] / best['auto']:.2f}**; paramiko / scp: "
        f"**{best['scp'] / best['paramiko']:.2f}** (target ≥ 0.8)", "",
        f"## Restore of a {rs['archive'] / MiB:.0f} MiB backup ({rs['parts']} parts, {rs['files']} files, "
        f"{rs['tar'] / MiB:.0f} MiB of tar) on the host", "",
        "| what | seconds | MB of archive per second |", "|---|---|---|",
        f"| staging (SFTP put + remote sha256 per part) | {rs['stage_s']:.2f} | {mbps(rs['archive'], rs['stage_s']):.1f} |",
        f"| restore agent (inflate, tar checks, path checks, write + rename) | {rs['agent_s']:.2f} | "
        f"**{mbps(rs['archive'], rs['agent_s']):.1f}** |",
        f"| the same over SSH incl. agent start (wall) | {rs['wall_s']:.2f} | {mbps(rs['archive'], rs['wall_s']):.1f} |",
        f"| `cat parts \\| tar xzf -` (no checks; reference) | {rs['tar_s']:.2f} | {mbps(rs['archive'], rs['tar_s']):.1f} |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
