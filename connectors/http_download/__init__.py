"""Parallel, resumable, verifying HTTP download of backup parts, with SSH repair.

Public surface: :func:`transfer_backup` (the whole step), :class:`Downloader`, the sources
(:class:`UrlListSource`; the platform's own delivery is a ``connectors.platform.BackupDelivery``),
the configuration models, and the results (:class:`TransferReport`, :class:`PartResult`, :class:`Progress`).
Which parts make a backup and what their headers say comes from the platform's
``connectors.platform.BackupFormat``, passed in as ``fmt``.
"""

from .configuration import BackupSection, DownloadSettings, MirrorSettings, UrlsBackupSection
from .downloader import Downloader, PartResult, Progress
from .source import BackupSource, RemotePart, UrlListSource
from .transfer import TransferReport, repair_from_mirror, transfer_backup
from .verify import PartVerifier, VerifyResult

__all__ = [
    "BackupSection", "DownloadSettings", "MirrorSettings", "UrlsBackupSection", "Downloader", "PartResult",
    "Progress", "BackupSource", "RemotePart", "UrlListSource", "TransferReport", "repair_from_mirror",
    "transfer_backup", "PartVerifier", "VerifyResult",
]
