"""Fixtures for the box host tests: the real sshd (the host IS this machine) and a fresh
database on the machine's MariaDB per test."""

from __future__ import annotations

from connectors import platforms
from connectors.box_host import BoxDbSettings, BoxHost, BoxHostSection, PreflightSettings
from connectors.ssh import RemoteHost

AGENT_SOURCE = platforms.default().restore.agent_source  # the host is generic; the agent is the platform's

def box_section(sshd, tmp, db_name: str = "c2b_unused", **kw) -> BoxHostSection:
    base = dict(host=sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                known_hosts=sshd.known_hosts, site_root=str(tmp / "www"), staging_dir=str(tmp / "staging"),
                python="/usr/bin/python3",
                db=BoxDbSettings(host="127.0.0.1", port=3306, user="root", password_secret=None, database=db_name),
                preflight=PreflightSettings(min_cpus=1, min_ram_mib=256, php_min="", ports=[sshd.port],
                                            max_clock_skew_s=5))
    base.update(kw)
    return BoxHostSection(**base)


def box_host(section: BoxHostSection, records: list | None = None, **kw) -> BoxHost:
    remote = RemoteHost.from_settings(section, on_command=records.append if records is not None else None)
    return BoxHost(section, remote, agent_source=AGENT_SOURCE, **kw)
