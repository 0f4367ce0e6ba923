"""Benchmark of the backup downloader against the sandbox backup server (its own process), with
the shipped defaults (8 connections, 8 MiB chunks; only the connection count varies) and
aria2c against the same server in the same run.

1. Throttled per connection (the cloud's 800 KiB/s): ours / (N × cap) for N = 4, 16, 64 on a
   backup of N × 26 MiB (3.25 chunks per connection: a remainder that leaves most connections
   idle at the end if only whole chunks are handed out), and ours(16) vs aria2c -x16 -s16 -j1
   (16 connections each).
2. Unthrottled on loopback with full verification, alternating ours and aria2c; with the
   server's md5 ETag (md5 checked too) and without it (sha256 + gzip + BX only).
3. CPU per GiB of the one-pass verification, by content, zlib-ng and the stdlib zlib.
4. Verifier memory (tracemalloc peak) over a part that inflates to 1 GiB of zeros.
5. Resume waste: kill -9 the downloader at random moments, restart; bytes sent / backup size.

Every timed figure is the median of ``--repeat`` runs (the machine is shared: single runs are
noisy). Each client runs in its own process; its CPU seconds and peak RSS are reported too.

Usage: ``python bench/download_bench.py [--quick] [--repeat 3] [--out bench/RESULTS-download.md]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors import platforms  # noqa: E402
from connectors.http_download import verify  # noqa: E402
from connectors.http_download.configuration import DownloadSettings  # noqa: E402
from connectors.http_download.verify import PartVerifier  # noqa: E402
from sandbox.backup_maker import make_backup, write_parts  # noqa: E402

MiB = 2**20
DEFAULTS = DownloadSettings()
FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SERVER = """
import json, signal, sys
from sandbox.backup_server import BackupServer
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # wait for them below
srv = BackupServer(sys.argv[1], rate=int(sys.argv[2]), etag=sys.argv[3] == "1").start()
print(json.dumps(srv.part_urls()), flush=True)
signal.sigwait([signal.SIGINT, signal.SIGTERM])
srv.close()
print(json.dumps({"body_bytes": srv.stats.body_bytes}), flush=True)
"""
CLIENT = """
import json, resource, sys, time
from connectors import platforms
from connectors.http_download import DownloadSettings, UrlListSource, transfer_backup
urls, dest, connections, chunk_mib = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
settings = DownloadSettings(connections=connections, chunk_mib=chunk_mib, show_progress=False)
cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
report = transfer_backup(UrlListSource(urls), dest, settings, fmt=platforms.get("bitrix24").format)
took, cpu1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF)
assert all(p.status == "verified" for p in report.parts)
print(json.dumps({"seconds": took, "cpu": cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime,
                  "checks": list(report.parts[-1].checks)}))
"""


class Server:
    """The sandbox backup server in its own process (so it does not share our GIL)."""

    def __init__(self, directory: Path, rate: int, *, etag: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(directory), str(rate), "1" if etag else "0"],
                                     cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
        self.urls = json.loads(self.proc.stdout.readline())

    def close(self) -> int:
        """Stop the server; return the body bytes it sent."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            line = self.proc.stdout.readline()
            self.proc.wait(timeout=20)
            return json.loads(line)["body_bytes"] if line else 0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return 0

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run(cmd: list[str], timeout: float) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS KiB, stdout) of one child process."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    took = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # cumulative: the caller takes differences
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err[-2000:]}")
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, out


def ours(server: Server, dest: Path, total: int, connections: int, chunk_mib: float = DEFAULTS.chunk_mib) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, _, _, out = _run([sys.executable, "-c", CLIENT, json.dumps(server.urls), str(dest), str(connections),
                         str(chunk_mib)], timeout=3600)
    res = json.loads(out.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(dest, ignore_errors=True)
    return {"bps": total / res["seconds"], "cpu_ns_per_byte": res["cpu"] / total * 1e9, "checks": res["checks"],
            "cpu_total": after.ru_utime + after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime}


ARIA2 = ["aria2c", "-x16", "-s16", "-k1M", "--file-allocation=none", "--console-log-level=error",
         "--summary-interval=0", "--allow-overwrite=true", "--auto-file-renaming=false"]


def aria2(server: Server, dest: Path, total: int, jobs: int = 1) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "urls.txt").write_text("\n".join(server.urls) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    took, _, _, _ = _run(ARIA2 + [f"-j{jobs}", "-d", str(dest), "-i", str(dest / "urls.txt")], timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(dest, ignore_errors=True)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"bps": total / took, "cpu_ns_per_byte": cpu / total * 1e9}


def median(runs: list[dict], key: str = "bps") -> float:
    return statistics.median(r[key] for r in runs)


def backup(work: Path, name: str, total_bytes: int, part_size: int, seed: int):
    part_size -= part_size % 512
    made = make_backup(work / name, total_bytes=total_bytes, part_size=part_size, seed=seed)
    os.sync()  # else the kernel's writeback of the new backup slows the first run's fsyncs
    return made


def throttled(work: Path, rate: int, repeat: int, quick: bool) -> dict:
    per_connection = (4 if quick else 26) * MiB  # 3.25 chunks of 8 MiB (quick: half a chunk)
    out = {}
    for n in (4, 16, 64):
        made = backup(work, f"thr{n}", n * per_connection, n * per_connection * 10 // 33, seed=n)
        total = made.total_size
        with Server(made.directory, rate) as server:
            runs, peers = [], []
            for _ in range(repeat):
                runs.append(ours(server, work / "dl", total, n))
                print(f"throttled N={n}: ours {runs[-1]['bps'] / 1e6:.2f} MB/s", flush=True)
                if n == 16:
                    peers.append(aria2(server, work / "aria", total))
                    print(f"throttled N=16: aria2c -j1 {peers[-1]['bps'] / 1e6:.2f} MB/s", flush=True)
        out[n] = {"total": total, "parts": len(made.parts), "runs": runs, "aria2": peers}
        shutil.rmtree(made.directory)
    return out


def unthrottled(work: Path, repeat: int, quick: bool) -> dict:
    made = backup(work, "big", (256 if quick else 1024) * MiB, 100 * MiB, seed=2)
    total = made.total_size
    out = {"total": total, "parts": len(made.parts)}
    for etag in (True, False):
        with Server(made.directory, 0, etag=etag) as server:
            aria2(server, work / "aria", total)  # warm-up: first-touch page faults of this VM hit the first run
            ours(server, work / "dl", total, DEFAULTS.connections)
            runs, peers, peers5 = [], [], []
            for _ in range(repeat):  # alternate, so load from other users of the machine hits both alike
                runs.append(ours(server, work / "dl", total, DEFAULTS.connections))
                peers.append(aria2(server, work / "aria", total))
                peers5.append(aria2(server, work / "aria", total, jobs=5))
                print(f"unthrottled etag={etag}: ours {runs[-1]['bps'] / 1e6:.0f}, aria2c -j1 "
                      f"{peers[-1]['bps'] / 1e6:.0f}, -j5 {peers5[-1]['bps'] / 1e6:.0f} MB/s", flush=True)
        out[etag] = {"runs": runs, "aria2": peers, "aria2_j5": peers5}
    shutil.rmtree(made.directory)
    return out


def _content(kind: str, size: int) -> bytes:
    rnd = random.Random(7)
    if kind == "zeros":
        return bytes(size)
    if kind == "random":
        return rnd.randbytes(size)
    rows, n = [], 0
    while n < size:
        row = f"({rnd.randrange(10**6)},'lead {rnd.randrange(10**4)}','NEW','2026-11-23 10:00:00',NULL),".encode()
        rows.append(row)
        n += len(row)
    return b"".join(rows)[:size]


def verification_cpu(work: Path, quick: bool) -> list[dict]:
    """CPU seconds per GiB of part bytes (and per GiB inflated) for each content and inflater."""
    rows = []
    size = (32 if quick else 128) * MiB
    for kind in ("random", "sql", "zeros"):
        parts = write_parts(work / f"cpu-{kind}", "c.tar.gz", [_content(kind, size)], part_size=size, level=6)
        data = parts[0].path.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        for inflater in ("zlib_ng", "zlib"):
            saved = verify._inflater
            if inflater == "zlib":
                verify._inflater = zlib
            try:
                for with_md5 in (False, True):
                    best = float("inf")
                    for _ in range(3):
                        started = time.process_time()
                        v = PartVerifier("c", len(data), fmt=FMT, md5=md5 if with_md5 else None)
                        for i in range(0, len(data), DEFAULTS.chunk_size):
                            v.update(data[i:i + DEFAULTS.chunk_size])
                        v.finish()
                        best = min(best, time.process_time() - started)
                    rows.append({"content": kind, "inflater": inflater, "md5": with_md5, "ratio": size / len(data),
                                 "s_per_gib": best / (len(data) / 2**30), "inflated_mb_s": size / best / 1e6})
            finally:
                verify._inflater = saved
        shutil.rmtree(work / f"cpu-{kind}")
    return rows


def verifier_memory(quick: bool) -> list[dict]:
    """tracemalloc peak while a part of 1 GiB of zeros (one gzip member) is fed in various chunks."""
    size = (256 if quick else 1024) * MiB
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = b"".join(comp.compress(bytes(MiB)) for _ in range(size // MiB)) + comp.flush()
    # the vendor's header member (DESIGN.md): FEXTRA, XLEN 10, BX + size, empty deflate block
    header = (b"\x1f\x8b\x08\x04" + bytes(6) + struct.pack("<H", 10) + bytes(4) + b"BX" + struct.pack("<I", size)
              + b"\x03\x00" + bytes(8))
    data = header + body
    rows = []
    for inflater in ("zlib_ng", "zlib"):
        saved = verify._inflater
        if inflater == "zlib":
            verify._inflater = zlib
        try:
            for step in (64 * 1024, MiB, 16 * MiB):
                chunks = [data[i:i + step] for i in range(0, len(data), step)]
                v = PartVerifier("m", len(data), fmt=FMT)
                tracemalloc.start()
                started = time.process_time()
                for chunk in chunks:
                    v.update(chunk)
                took = time.process_time() - started
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert v.data_size == size
                rows.append({"inflater": inflater, "chunk": step, "peak": peak, "cpu_s": took, "size": size})
        finally:
            verify._inflater = saved
    return rows


def resume_waste(work: Path, *, kills: int, connections: int, chunk_mib: float, rate: int, quick: bool) -> dict:
    made = backup(work, "resume-src", (8 if quick else 64) * MiB, 16 * MiB, seed=1)
    total = made.total_size
    server = Server(made.directory, rate)
    dest = work / "resume"
    shutil.rmtree(dest, ignore_errors=True)
    rnd = random.Random(42)
    expect_s = total / (connections * rate) + 1
    try:
        for _ in range(kills):
            child = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(server.urls), str(dest),
                                      str(connections), str(chunk_mib)], cwd=ROOT, env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.3, expect_s / kills * 1.5))
            child.send_signal(signal.SIGKILL)
            child.wait()
        _run([sys.executable, "-c", CLIENT, json.dumps(server.urls), str(dest), str(connections), str(chunk_mib)],
             timeout=3600)
    finally:
        sent = server.close()
    shutil.rmtree(made.directory)
    chunk = int(chunk_mib * MiB)
    return {"kills": kills, "sent": sent, "total": total, "ratio": sent / total,
            "bound_all": 1 + kills * connections * chunk / total, "bound_per_kill": 1 + connections * chunk / total}


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    aria = subprocess.run(["aria2c", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}, {aria}, inflater {verify.INFLATER}; server and clients on loopback, each in "
            "its own process")


def mbs(runs: list[dict], digits: int = 2) -> str:
    return ", ".join(f"{r['bps'] / 1e6:.{digits}f}" for r in runs)


def report(args, thr: dict, unt: dict, cpu: list[dict], mem: list[dict], rw: dict) -> list[str]:
    cap = args.rate
    lines = [
        "# Backup download benchmark",
        "",
        f"Command: `python bench/download_bench.py{' --quick' if args.quick else ''} --repeat {args.repeat}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Settings: the shipped defaults ({DEFAULTS.connections} connections, {DEFAULTS.chunk_mib:g} MiB chunks); "
        f"only the connection count varies. Every figure is the median of {args.repeat} runs (shared machine).",
        "",
        f"## Throttled: {cap // 1024} KiB/s per connection, backup of N × 26 MiB (3.25 chunks per connection)",
        "",
        "| client | connections | backup | MB/s (median) | runs | ours / (N × cap) | CPU ns/B |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in thr.items():
        bps = median(r["runs"])
        lines.append(f"| cloud2box | {n} | {r['total'] / MiB:.0f} MiB, {r['parts']} parts | {bps / 1e6:.2f} | "
                     f"{mbs(r['runs'])} | **{bps / (n * cap):.3f}** | "
                     f"{median(r['runs'], 'cpu_ns_per_byte'):.1f} |")
        if r["aria2"]:
            a = median(r["aria2"])
            lines.append(f"| aria2c -x16 -s16 -k1M -j1 | 16 | same | {a / 1e6:.2f} | "
                         f"{mbs(r['aria2'])} | {a / (16 * cap):.3f} | "
                         f"{median(r['aria2'], 'cpu_ns_per_byte'):.1f} |")
    a16 = median(thr[16]["aria2"])
    lines += ["", f"ours(16) / aria2c(16): **{median(thr[16]['runs']) / a16:.2f}** (target ≥ 1.1); "
                  "ours / (N × cap) target ≥ 0.95.", "",
              f"## Unthrottled loopback, full verification: {unt['total'] / MiB:.0f} MiB in {unt['parts']} parts",
              "",
              "| server's ETag | cloud2box checks | cloud2box MB/s | aria2c -j1 MB/s | ours / aria2c -j1 | "
              "aria2c -j5 MB/s | CPU ns/B ours / aria2c |",
              "|---|---|---|---|---|---|---|"]
    for etag in (True, False):
        r = unt[etag]
        o, a, a5 = median(r["runs"]), median(r["aria2"]), median(r["aria2_j5"])
        lines.append(f"| {'md5' if etag else 'none'} | {', '.join(r['runs'][0]['checks'])} | {o / 1e6:.0f} "
                     f"({mbs(r['runs'], 0)}) | {a / 1e6:.0f} "
                     f"({mbs(r['aria2'], 0)}) | **{o / a:.2f}** | "
                     f"{a5 / 1e6:.0f} | {median(r['runs'], 'cpu_ns_per_byte'):.1f} / "
                     f"{median(r['aria2'], 'cpu_ns_per_byte'):.1f} |")
    lines += ["", "cloud2box inflates every member (CRC32 + length), checks BX, hashes sha256 (and md5 when the "
                  "server's ETag is one) while writing, and fsyncs each chunk before the state file records it; "
                  "aria2c does none of that. Runs alternate ours / aria2c after one warm-up run of each.", "",
              "## Verification CPU (one pass: sha256 [+ md5] + inflate with CRC32/length), 8 MiB chunks", "",
              "| content | deflate ratio | inflater | md5 too | CPU s per GiB of part | inflated MB/s |",
              "|---|---|---|---|---|---|"]
    for r in cpu:
        lines.append(f"| {r['content']} | {r['ratio']:.1f} | {r['inflater']} | {'yes' if r['md5'] else 'no'} | "
                     f"{r['s_per_gib']:.2f} | {r['inflated_mb_s']:.0f} |")
    lines += ["", f"## Verifier memory: one part that inflates to {mem[0]['size'] / MiB:.0f} MiB of zeros", "",
              f"Bound (`verify.MEMORY_BOUND`): {verify.MEMORY_BOUND / MiB:.2f} MiB besides the chunk fed.", "",
              "| inflater | chunk fed | tracemalloc peak | CPU s |", "|---|---|---|---|"]
    for r in mem:
        lines.append(f"| {r['inflater']} | {r['chunk'] // 1024} KiB | {r['peak'] / MiB:.2f} MiB | {r['cpu_s']:.2f} |")
    lines += ["", f"## Resume waste: kill -9 at {rw['kills']} random moments, then run to the end", "",
              f"4 connections, chunk 0.5 MiB, 2 MiB/s per connection; backup {rw['total'] / MiB:.1f} MiB. "
              f"Bytes the server sent / bytes of the backup: **{rw['ratio']:.3f}** (bound 1 + kills × connections "
              f"× chunk / size = {rw['bound_all']:.3f}).", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--rate", type=int, default=800 * 1024, help="per-connection cap in bytes/s")
    ap.add_argument("--only", choices=["throttled", "unthrottled", "cpu"], help="run one section (no report file)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-download.md"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="c2b-dlbench-"))
    try:
        if args.only:
            fn = {"throttled": lambda: throttled(work, args.rate, args.repeat, args.quick),
                  "unthrottled": lambda: unthrottled(work, args.repeat, args.quick),
                  "cpu": lambda: (verification_cpu(work, args.quick), verifier_memory(args.quick))}[args.only]
            print(json.dumps(fn(), indent=1, default=str))
            return 0
        mem = verifier_memory(args.quick)
        cpu = verification_cpu(work, args.quick)
        unt = unthrottled(work, args.repeat, args.quick)
        thr = throttled(work, args.rate, args.repeat, args.quick)
        rw = resume_waste(work, kills=3 if args.quick else 10, connections=4, chunk_mib=0.5, rate=2 * MiB,
                          quick=args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = report(args, thr, unt, cpu, mem, rw)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
