"""report.pdf: the auditor's report printed by headless Chromium, A4 portrait (the HTML's ``@page``).

Chromium is optional: without it the HTML is the report and :func:`print_pdf` says why there is no
PDF instead of failing the run. :func:`find_chromium` is the one place that decides which browser
prints: an explicit path (a config value, later), else ``$CLOUD2BOX_CHROMIUM``, else the first
Chromium or Chrome on ``PATH``. ``CLOUD2BOX_CHROMIUM=off`` (or empty) turns printing off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_ENV = "CLOUD2BOX_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PRINT_TIMEOUT_S = 90.0  # a 30-page report prints in a few seconds; a busy 2-core host needs headroom
_OFF = {"", "0", "off", "no", "none", "false"}
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
          "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-quic", "--no-pdf-header-footer"]


@dataclass
class PdfResult:
    """The PDF written (``path``), or None and ``note`` saying why not."""

    path: Path | None
    note: str = ""


def find_chromium(override: str | None = None) -> tuple[str | None, str]:
    """The Chromium to print with, and where it came from (or why there is none).

    Args:
        override: a path or command name that wins over the environment and ``PATH``.
    """
    for value, where in ((override, "the config"), (os.environ.get(CHROMIUM_ENV), f"${CHROMIUM_ENV}")):
        if value is None:
            continue
        if value.strip().lower() in _OFF:
            return None, f"printing is switched off by {where}"
        found = shutil.which(value)
        return (found, where) if found else (None, f"{where} names {value!r}, which is not an executable")
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found, "PATH"
    return None, (f"no Chromium or Chrome on PATH (looked for {', '.join(CHROMIUM_NAMES)}); install chromium "
                  f"or set {CHROMIUM_ENV} to its path")


def print_pdf(html: Path, pdf: Path, *, chromium: str | None = None,
              timeout_s: float = PRINT_TIMEOUT_S) -> PdfResult:
    """Print ``html`` to ``pdf`` (0600) with headless Chromium, within ``timeout_s``.

    The PDF appears whole or not at all (written beside, then renamed); on any failure an older
    ``pdf`` is removed, so it never sits next to a newer HTML it does not match.
    """
    pdf = Path(pdf)
    exe, where = find_chromium(chromium)
    if exe is None:
        pdf.unlink(missing_ok=True)
        return PdfResult(None, f"{pdf.name} not written: {where}")
    part = pdf.with_name(f".{pdf.name}.{os.getpid()}.part")
    note = ""
    with tempfile.TemporaryDirectory(prefix="c2b-chromium-") as profile:
        cmd = [exe, *_FLAGS, f"--user-data-dir={profile}", f"--print-to-pdf={part}", Path(html).resolve().as_uri()]
        with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True) as proc:
            try:
                _, err = proc.communicate(timeout=timeout_s)
                if proc.returncode:
                    last = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()][-1:]
                    note = f"Chromium ({exe}) exited with {proc.returncode}" + (f": {last[0][:300]}" if last else "")
            except subprocess.TimeoutExpired:
                note = f"Chromium ({exe}) did not finish printing within {timeout_s:.0f} s"
            finally:
                _stop_group(proc)
    try:
        if not note and (not part.exists() or not part.read_bytes()[:5] == b"%PDF-"):
            note = f"Chromium ({exe}) wrote no PDF"
        if note:
            pdf.unlink(missing_ok=True)
            return PdfResult(None, f"{pdf.name} not written: {note}")
        os.chmod(part, 0o600)
        os.replace(part, pdf)
        return PdfResult(pdf)
    finally:
        part.unlink(missing_ok=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """End what this print started (Chromium's helpers are in the process group it leads)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


__all__ = ["PdfResult", "find_chromium", "print_pdf", "CHROMIUM_ENV"]
