"""The self-hosted box over SSH: preflight, staging, restore of files and DB, post-restore fixes."""

from .configuration import BoxDbSettings, BoxHostSection, PostRestoreSection, PreflightSettings
from .host import BoxHost, Check, LocalPart, PreflightReport, StageReport, UnsafeArchiveError, dump_order
from .post_restore import FixResult, run_fixes

__all__ = ["BoxDbSettings", "BoxHostSection", "PostRestoreSection", "PreflightSettings", "BoxHost", "Check",
           "LocalPart", "PreflightReport", "StageReport", "UnsafeArchiveError", "dump_order", "FixResult", "run_fixes"]
