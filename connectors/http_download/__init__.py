"""Parallel, resumable, verifying HTTP download of backup parts, with SSH repair.

Public surface: :func:`transfer_backup` (the whole step), :class:`Downloader`, the sources
(:class:`UrlListSource`; the vendor's is in ``connectors.bitrix24.backup_source``), the
configuration models, and the results (:class:`TransferReport`, :class:`PartResult`, :class:`Progress`).
"""

from .configuration import BackupSection, DownloadSettings, MirrorSettings
from .downloader import Downloader, PartResult, Progress
from .source import BackupSource, RemotePart, UrlListSource
from .transfer import TransferReport, repair_from_mirror, transfer_backup
from .verify import PartVerifier, VerifyResult

__all__ = [
    "BackupSection", "DownloadSettings", "MirrorSettings", "Downloader", "PartResult", "Progress",
    "BackupSource", "RemotePart", "UrlListSource", "TransferReport", "repair_from_mirror", "transfer_backup",
    "PartVerifier", "VerifyResult",
]
