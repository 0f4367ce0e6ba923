"""The self-hosted box over SSH: preflight, staging, restore of files and DB; the shapes of step 2.4's fixes."""

from .configuration import BoxDbSettings, BoxHostSection, PreflightSettings
from .host import BoxHost, Check, LocalPart, PreflightReport, StageReport, UnsafeArchiveError
from .post_restore import FixResult

__all__ = ["BoxDbSettings", "BoxHostSection", "PreflightSettings", "BoxHost", "Check", "LocalPart", "PreflightReport",
           "StageReport", "UnsafeArchiveError", "FixResult"]
