"""SSH/SFTP hosts: the backup mirror (repairs) and, later, the box host."""

from .client import RemoteHost
from .configuration import SshHostSettings

__all__ = ["RemoteHost", "SshHostSettings"]
