"""Benchmark of the restore agent on this machine against GNU tar on the same parts.

The agent (``connectors/bitrix24/agent/restore_agent.py``) runs as the box host runs it: the host's
``python3`` (stdlib only; ``--python``), one JSON request on stdin, the parts of a sandbox backup
(:func:`sandbox.backup_maker.make_backup`) restored into an empty directory, every check on
(gzip CRC and sizes, tar checksums, path walk by descriptors, temp file + rename, final sync).

References, same parts, same rounds, alternating:

- plain: ``cat parts | tar xzf - -C DIR && sync``;
- encrypted: ``cat parts | gzip -dc | tail -c +513 | openssl enc -d -aes-256-ecb -K KEY -nopad |
  tar xf - -C DIR && sync`` — the pipeline the vendor's own source comments give (AES only:
  ``openssl enc`` cuts Blowfish keys to 16 bytes).

Targets (issue 11): agent ≥ 1.0 × tar on plain parts; encrypted ≥ 0.5 × the agent's plain speed.
MB/s are MB (10^6 bytes) of archive (the parts' bytes) per second.

Usage: ``python bench/restore_bench.py [--size-mib 256] [--rounds 3] [--content portal,sql]
[--backends cryptography,libcrypto,openssl] [--bf-mib 64] [--python-bf-mib 4] [--out bench/RESULTS-restore.md]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.backup_maker import make_backup  # noqa: E402

AGENT = ROOT / "connectors" / "bitrix24" / "agent" / "restore_agent.py"
MiB = 2**20
PASSWORD = "bench password"


def run_agent(python: str, agent: Path, parts: list[Path], target: Path, state: Path, *, key: str | None = None,
              crypto: str | None = None) -> tuple[float, dict]:
    request = {"op": "restore", "parts": [str(p) for p in parts], "target": str(target), "state": str(state),
               "key": key, "force": True}
    if crypto:
        request["crypto"] = crypto
    started = time.perf_counter()
    proc = subprocess.run([python, str(agent)], input=json.dumps(request).encode(), capture_output=True, timeout=3600)
    wall = time.perf_counter() - started
    answer = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    if not answer.get("ok"):
        raise SystemExit(f"agent failed: {answer}")
    return wall, answer


def run_shell(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True, timeout=3600, executable="/bin/bash")
    return time.perf_counter() - started


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def case_rounds(rounds: int, runners: dict) -> dict[str, list[float]]:
    """Run every runner once per round, the order rotated each round; seconds per runner."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(runners[name]())
    return times


def bench_content(args, content: str, work: Path) -> tuple[list[str], list[str], dict]:
    """(summary lines, table rows, agent answers) for backups of one ``content``."""
    agent = Path(args.agent)
    backends = [b for b in args.backends.split(",") if b]
    key = hashlib.md5(PASSWORD.encode()).hexdigest()
    rows: list[str] = []
    extra: dict[str, dict] = {}

    def made_parts(label: str, mib: int, **kw):
        made = make_backup(work / label, total_bytes=mib * MiB, part_size=args.part_mib * MiB, seed=7,
                           content=content, **kw)
        return made, [p.path for p in made.parts]

    def agent_runner(parts, label, **kw):
        def run() -> float:
            wall, answer = run_agent(args.python, agent, parts, fresh(work / "t-agent"), work / "state.json", **kw)
            extra.setdefault(f"{content} {label}", answer)
            return wall
        return run

    def tar_runner(command: str):
        def run() -> float:
            fresh(work / "t-tar")
            return run_shell(command)
        return run

    def report(title: str, made, times: dict[str, list[float]]) -> None:
        size = made.total_size
        rows.extend([f"### {content}, {title}: {size / 1e6:.0f} MB of archive in {len(made.parts)} parts, "
                     f"{made.tar_size / 1e6:.0f} MB of tar", "",
                     "| what | seconds (each round) | best MB/s of archive | median MB/s |", "|---|---|---|---|"])
        for name, ts in times.items():
            best, median = size / min(ts) / 1e6, size / statistics.median(ts) / 1e6
            rows.append(f"| {name} | {', '.join(f'{t:.2f}' for t in ts)} | {best:.1f} | {median:.1f} |")
        rows.append("")

    plain, plain_parts = made_parts("plain", args.size_mib)
    cat = " ".join(str(p) for p in plain_parts)
    tar_name = "`cat parts | tar xzf - && sync`"
    times = case_rounds(args.rounds, {
        "restore agent": agent_runner(plain_parts, "plain"),
        tar_name: tar_runner(f"cat {cat} | tar xzf - -C {work / 't-tar'} && sync"),
    })
    report("plain", plain, times)
    plain_agent = min(times["restore agent"])
    ratio_tar = min(times[tar_name]) / plain_agent

    aes, aes_parts = made_parts("aes", args.size_mib, encrypt_password=PASSWORD, encrypt_cipher="aes-256-ecb")
    cat = " ".join(str(p) for p in aes_parts)
    runners = {f"restore agent, {b}": agent_runner(aes_parts, f"aes-{b}", key=key, crypto=b) for b in backends}
    runners["vendor's pipeline (gzip | tail | openssl | tar) && sync"] = tar_runner(
        f"cat {cat} | gzip -dc | tail -c +513 | openssl enc -d -aes-256-ecb -K {key.encode().hex()} -nopad "
        f"| tar xf - -C {work / 't-tar'} && sync")
    times = case_rounds(args.rounds, runners)
    report("aes-256-ecb (version 1.2)", aes, times)
    # the same tar restored: the speed ratio is the time ratio (the encrypted archive is bigger:
    # encryption comes before gzip, so it does not compress)
    aes_ratios = {b: plain_agent / min(times[f"restore agent, {b}"]) for b in backends}

    bf_ratios = {}
    if args.bf_mib:
        bf, bf_parts = made_parts("bf", args.bf_mib, encrypt_password=PASSWORD, encrypt_cipher="bf-ecb")
        native = [b for b in backends if b != "openssl"]
        times = case_rounds(args.rounds, {f"restore agent, {b}": agent_runner(bf_parts, f"bf-{b}", key=key, crypto=b)
                                          for b in native})
        report("bf-ecb (version 1.2)", bf, times)
        bf_ratios = {b: (bf.tar_size / min(times[f"restore agent, {b}"])) / (plain.tar_size / plain_agent)
                     for b in native}
    if args.python_bf_mib:
        small, small_parts = made_parts("bf-small", args.python_bf_mib, encrypt_password=PASSWORD,
                                        encrypt_cipher="bf-ecb")
        times = case_rounds(1, {"restore agent, python (pure-Python Blowfish)":
                                agent_runner(small_parts, "bf-python", key=key, crypto="python")})
        report("bf-ecb, pure Python", small, times)
    summary = [
        f"- {content}: agent / tar (plain, best rounds) **{ratio_tar:.2f}** (target ≥ 1.0); encrypted AES / plain "
        "(agent, the same tar): " + ", ".join(f"{b} **{r:.2f}**" for b, r in aes_ratios.items()) + " (target ≥ 0.5)"
        + ("; Blowfish / plain (tar bytes/s): " + ", ".join(f"{b} {r:.2f}" for b, r in bf_ratios.items())
           if bf_ratios else "")]
    return summary, rows, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256, help="tar MiB of the plain and AES backups")
    ap.add_argument("--part-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--content", default="portal,sql", help="make_backup contents, comma-separated")
    ap.add_argument("--python", default="/usr/bin/python3", help="the box host's python3")
    ap.add_argument("--agent", default=str(AGENT), help="agent file to measure (e.g. an older version)")
    ap.add_argument("--backends", default="cryptography,libcrypto,openssl")
    ap.add_argument("--bf-mib", type=int, default=64, help="tar MiB of the Blowfish backup (0: skip)")
    ap.add_argument("--python-bf-mib", type=int, default=4, help="tar MiB for the pure-Python Blowfish (0: skip)")
    ap.add_argument("--work", default=None, help="directory for parts and targets (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-restore.md"), help="Markdown result file")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="c2b-restore-bench-"))
    summary, rows, extra = [], [], {}
    for content in args.content.split(","):
        s, r, e = bench_content(args, content, work / content)
        summary += s
        rows += r
        extra.update(e)
        if not args.work:
            shutil.rmtree(work / content, ignore_errors=True)
    python_version = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                                    capture_output=True, text=True).stdout.strip()
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    lines = [
        "# Restore agent benchmark", "",
        f"Command: `python bench/restore_bench.py --size-mib {args.size_mib} --part-mib {args.part_mib} "
        f"--rounds {args.rounds} --content {args.content} --backends {args.backends} --bf-mib {args.bf_mib} "
        f"--python-bf-mib {args.python_bf_mib}`  ",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), agent on {args.python} (Python {python_version}), "
        f"{openssl}, {tar}; shared VM, other jobs running: timings are noisy  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "", *summary, "", *rows,
        "Agent answers (first round of each): " + "; ".join(
            f"{k}: {v.get('files')} files, {v.get('duration_s')} s, sync {v.get('sync_s')} s, "
            f"cipher {v.get('cipher')}, crypto {v.get('crypto')}" for k, v in extra.items()), "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
