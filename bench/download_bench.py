"""Benchmark of the backup downloader against the sandbox backup server (its own process).

1. Throttled per connection (the cloud's ~800 KB/s): aggregate MB/s for 1, 4, 8, 16 connections,
   and aria2c -x16 -s16 fetching the same parts from the same server in the same run.
2. Unthrottled on loopback: ours vs aria2c.
3. CPU seconds per GB of the one-pass verification (sha256 + md5 + gzip inflate/CRC check).
4. Resume waste: kill -9 the downloader at random moments, restart; bytes the server sent /
   bytes of the backup.

Usage: ``python bench/download_bench.py [--quick] [--out bench/RESULTS-download.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.http_download import DownloadSettings, UrlListSource, transfer_backup  # noqa: E402
from connectors.http_download.verify import PartVerifier  # noqa: E402
from sandbox.backup_maker import make_backup  # noqa: E402

MiB = 2**20
THROTTLED_CHUNK_MIB = 0.25
CHILD = """
import json, sys
from connectors.http_download import DownloadSettings, UrlListSource, transfer_backup
urls, dest, chunk_mib, n = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
transfer_backup(UrlListSource(urls), dest, DownloadSettings(connections=n, chunk_mib=chunk_mib, show_progress=False))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The sandbox backup server in its own process (so it does not share our GIL)."""

    def __init__(self, directory: Path, rate: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.backup_server", "--dir", str(directory), "--rate", str(rate),
             "--port", str(self.port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.proc.stdout.readline()
        self.urls = []
        for line in self.proc.stdout:
            line = line.decode().strip()
            if line.startswith("http://") and "/parts/" in line:
                self.urls.append(line)
            if len(self.urls) == len([p for p in directory.iterdir() if ".tar.gz" in p.name]):
                break

    def sent(self) -> int:
        return requests.get(f"http://127.0.0.1:{self.port}/_stats", timeout=10).json()["body_bytes"]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ours(server: Server, dest: Path, connections: int, chunk_mib: float) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    settings = DownloadSettings(connections=connections, chunk_mib=chunk_mib, show_progress=False)
    started = time.monotonic()
    report = transfer_backup(UrlListSource(server.urls), dest, settings)
    took = time.monotonic() - started
    assert all(p.status == "verified" for p in report.parts)
    return report.total_bytes / took


def aria2(server: Server, dest: Path, total: int, jobs: int) -> tuple[float, str]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "urls.txt").write_text("\n".join(server.urls) + "\n")
    cmd = ["aria2c", "-x16", "-s16", "-k1M", f"-j{jobs}", "--file-allocation=none", "--console-log-level=error",
           "--summary-interval=0", "--allow-overwrite=true", "-d", str(dest), "-i", str(dest / "urls.txt")]
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    took = time.monotonic() - started
    return total / took, " ".join(cmd[:5 + 1]) + " … -i urls.txt"


def aria2_then_verify(server: Server, dest: Path, total: int, jobs: int) -> float:
    """aria2c, then the second read pass it needs to give the same assurance (gzip -t, sha256sum, md5sum)."""
    started = time.monotonic()
    aria2(server, dest, total, jobs)
    parts = sorted(str(p) for p in dest.iterdir() if ".tar.gz" in p.name)
    for tool in (["gzip", "-t"], ["sha256sum"], ["md5sum"]):
        subprocess.run(tool + parts, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return total / (time.monotonic() - started)


def cpu_per_gb(parts: list, target: int = 512 * MiB) -> dict:
    blobs = [(p.name, p.size, p.path.read_bytes()) for p in parts]
    fed = 0
    started = time.process_time()
    while fed < target:
        for name, size, data in blobs:
            v = PartVerifier(name, size)
            for i in range(0, len(data), MiB):
                v.update(data[i:i + MiB])
            v.finish()
            fed += size
    took = time.process_time() - started
    return {"bytes": fed, "cpu_s": took, "cpu_s_per_gb": took / (fed / 2**30)}


def resume_waste(directory: Path, total: int, *, kills: int, connections: int, chunk_mib: float, rate: int,
                 work: Path, expect_s: float) -> dict:
    server = Server(directory, rate)
    dest = work / "resume"
    shutil.rmtree(dest, ignore_errors=True)
    rnd = random.Random(42)
    try:
        for _ in range(kills):
            child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(server.urls), str(dest), str(chunk_mib),
                                      str(connections)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.3, expect_s / kills * 1.5))
            child.send_signal(signal.SIGKILL)
            child.wait()
        settings = DownloadSettings(connections=connections, chunk_mib=chunk_mib, show_progress=False)
        transfer_backup(UrlListSource(server.urls), dest, settings)
        sent = server.sent()
    finally:
        server.close()
    chunk = int(chunk_mib * MiB)
    return {"kills": kills, "sent": sent, "total": total, "ratio": sent / total,
            "bound_per_kill": 1 + connections * chunk / total, "bound_all": 1 + kills * connections * chunk / total}


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    aria = subprocess.run(["aria2c", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}, {aria}; server and client on loopback, server in its own process")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--rate", type=int, default=800 * 1024, help="per-connection cap in bytes/s")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-download.md"))
    args = ap.parse_args()
    q = args.quick
    work = Path(tempfile.mkdtemp(prefix="c2b-dlbench-"))
    lines = []
    try:
        # 1. throttled
        thr = make_backup(work / "thr", total_bytes=(6 if q else 64) * MiB, part_size=(2 if q else 16) * MiB, seed=1)
        total = thr.total_size
        server = Server(thr.directory, args.rate)
        rows = []
        try:
            for n in (1, 4, 8, 16, 64):
                bps = ours(server, work / "dl", n, THROTTLED_CHUNK_MIB)
                rows.append((n, bps))
                print(f"throttled, {n} connections: {bps / 1e6:.2f} MB/s", flush=True)
            a1, cmd1 = aria2(server, work / "aria", total, 1)
            a5, cmd5 = aria2(server, work / "aria", total, 5)
            print(f"throttled aria2c -j1 {a1 / 1e6:.2f} MB/s, -j5 {a5 / 1e6:.2f} MB/s", flush=True)
        finally:
            server.close()
        # 2. unthrottled
        big = make_backup(work / "big", total_bytes=(32 if q else 192) * MiB, part_size=(8 if q else 48) * MiB, seed=2)
        server = Server(big.directory, 0)
        try:
            u_ours = {n: ours(server, work / "dl", n, 8) for n in (4, 16)}
            u_a1, _ = aria2(server, work / "aria", big.total_size, 1)
            u_a5, _ = aria2(server, work / "aria", big.total_size, 5)
            u_av = aria2_then_verify(server, work / "aria", big.total_size, 1)
            print(f"unthrottled ours {u_ours}, aria2c -j1 {u_a1 / 1e6:.1f}, -j5 {u_a5 / 1e6:.1f} MB/s", flush=True)
        finally:
            server.close()
        # 3. CPU
        cpu = cpu_per_gb(big.parts, (128 if q else 1024) * MiB)
        print(f"verification CPU: {cpu['cpu_s_per_gb']:.2f} s/GB", flush=True)
        # 4. resume waste: 10 kills of a 4-connection download at 2 MB/s per connection
        rw = resume_waste(thr.directory, total, kills=3 if q else 10, connections=4, chunk_mib=0.5,
                          rate=2 * 1024 * 1024, work=work, expect_s=total / (8 * MiB) + 1)
        print(f"resume waste: {rw}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cap = args.rate
    lines += [
        "# Backup download benchmark",
        "",
        f"Command: `python bench/download_bench.py{' --quick' if q else ''}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"## Throttled: {cap // 1024} KiB/s per connection (the cloud's cap), {total / MiB:.1f} MiB in "
        f"{len(thr.parts)} parts, chunk {THROTTLED_CHUNK_MIB} MiB",
        "",
        "| client | connections | MB/s | ours / (N × cap) |",
        "|---|---|---|---|",
    ]
    for n, bps in rows:
        lines.append(f"| cloud2box | {n} | {bps / 1e6:.2f} | {bps / (n * cap):.2f} |")
    lines += [
        f"| aria2c -x16 -s16 -k1M -j1 | 16 | {a1 / 1e6:.2f} | {a1 / (16 * cap):.2f} |",
        f"| aria2c -x16 -s16 -k1M -j5 | up to 80 | {a5 / 1e6:.2f} | — |",
        "",
        f"ours(16) / aria2c(-j1, ≤ 16 connections): **{rows[3][1] / a1:.2f}**; "
        f"ours(64) / aria2c(-j5, up to 80 connections): **{rows[4][1] / a5:.2f}** "
        "(target ≥ 1.0); ours / (N × cap) target ≥ 0.9.",
        "",
        f"## Unthrottled loopback: {big.total_size / MiB:.0f} MiB in {len(big.parts)} parts, chunk 8 MiB",
        "",
        "| client | MB/s |",
        "|---|---|",
        *[f"| cloud2box, {n} connections | {bps / 1e6:.1f} |" for n, bps in u_ours.items()],
        f"| aria2c -x16 -s16 -k1M -j1 | {u_a1 / 1e6:.1f} |",
        f"| aria2c -x16 -s16 -k1M -j5 | {u_a5 / 1e6:.1f} |",
        f"| aria2c -j1, then gzip -t + sha256sum + md5sum (the same assurance, second read pass) | {u_av / 1e6:.1f} |",
        "",
        "cloud2box verifies every byte while writing (sha256, md5, gzip inflate + CRC32/length) and fsyncs each "
        "chunk before the state file records it; aria2c does neither.",
        "",
        "## Verification CPU (sha256 + md5 + gzip inflate with CRC32/length check, one pass)",
        "",
        f"{cpu['cpu_s_per_gb']:.2f} CPU seconds per GiB ({cpu['bytes'] / MiB:.0f} MiB verified in {cpu['cpu_s']:.2f} s).",
        "",
        f"## Resume waste: kill -9 at {rw['kills']} random moments, then run to the end",
        "",
        f"4 connections, chunk 0.5 MiB, 2 MiB/s per connection; backup {rw['total'] / MiB:.1f} MiB.",
        f"Bytes the server sent / bytes of the backup: **{rw['ratio']:.3f}** "
        f"(bound 1 + kills × connections × chunk / size = {rw['bound_all']:.3f}; per kill "
        f"{rw['bound_per_kill']:.3f}).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
