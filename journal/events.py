"""The kinds of journal events: one enum, so a writer and its readers cannot drift apart.

The values are the strings existing journals store; each event is a link of its run's hash
chain, so a value is never renamed (that would need a data migration). That is also why the
spelling is mixed: the ``crm_*`` kinds predate the kebab-case convention of the others.
An ``EventKind`` is a ``str``: it compares equal to the stored text.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """What a journal event records (``Event.kind``)."""

    # runs and steps
    START = "start"  # a run started
    RESUME = "resume"  # an unfinished run was taken up again
    DOWNTIME_START = "downtime-start"  # users stopped working in the cloud
    DOWNTIME_END = "downtime-end"  # users work on the box
    GATE_REFUSED = "gate-refused"  # an approval was not taken (e.g. a fire is open)
    # the box host and the restore
    SSH_COMMAND = "ssh-command"
    PREFLIGHT = "preflight"
    STAGED = "staged"
    RESTORED_FILES = "restored-files"
    RESTORED_DB = "restored-db"
    POST_RESTORE = "post-restore"
    # the backup download
    ETA = "eta"  # a throughput sample; the final one (eta_s = 0) is the average
    DOWNLOAD_FAILED = "download-failed"
    PART_REPAIRED = "part-repaired"
    # the CRM delta
    CRM_BACKUP_MARKS = "crm-backup-marks"  # the backup's highest IDs and counts, taken before the import
    CRM_DELTA_EXPORT = "crm_delta_export"
    CRM_DELETED_IN_CLOUD = "crm_deleted_in_cloud"
    CRM_FALLBACK_USERS = "crm_fallback_users"
    CRM_DUPLICATES_IN_BOX = "crm_duplicates_in_box"
    CRM_RECONCILIATION = "crm_reconciliation"
    # straggler sweeps (journal/sweeps.py)
    SWEEP = "sweep"
    SWEEP_ALERT = "sweep-alert"  # a sweep failed or stopped; its requests count in the day's budget
    QUARANTINE = "quarantine"
    QUARANTINE_RELEASE = "quarantine-release"
    STRAGGLERS_TOLD = "stragglers-told"
    # the pre-sync of phase 2 (flows/presync.py): the same sweeps, before the users stop in the cloud
    PRESYNC = "presync"
    PRESYNC_ALERT = "presync-alert"  # a pass failed or stopped; its requests count in the day's budget
    # checks, issues, escalation, notices, forecasts
    VERIFICATION = "verification"
    ISSUE = "issue"
    ISSUE_RESOLVED = "issue-resolved"
    LADDER = "ladder"
    NOTICE = "notice"
    FORECAST = "forecast"
    FORECAST_ETA = "forecast-eta"
    # who signs (journal/signers.py, flows/signing.py): the roster's people, their codes and notices
    PERSON_NOTICE = "person-notice"  # a roster person was told to act (a code in it is never journaled)
    WAIT = "wait"  # the run waits for a person without a process (suspended until the answer)
    SIGN_VERIFIED = "sign-verified"  # an answer was taken from a roster person (code checked for the customer)
    SIGN_REFUSED = "sign-refused"  # an answer was not taken: wrong, expired or used code, or not eligible
    SIGN_UNBOUND = "sign-unbound"  # a rehearsal without [[roster]]: the name is as typed, not verified
    ISSUE_OVERRIDE = "issue-override"  # a fire closed by hand with the customer's code and a reason
    # the journal itself
    ANCHOR_UNDELIVERED = "anchor-undelivered"  # an anchor did not reach [journal] anchor (journal/anchor.py)


__all__ = ["EventKind"]
