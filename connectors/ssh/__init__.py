"""SSH/SFTP hosts: the backup mirror (repairs) and the box host (commands, uploads, small files)."""

from .client import CommandRecord, RemoteHost
from .configuration import SshHostSettings

__all__ = ["CommandRecord", "RemoteHost", "SshHostSettings"]
