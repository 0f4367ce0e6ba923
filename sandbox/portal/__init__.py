"""The sandbox Bitrix24 portal: an emulator of the REST API cloud2box uses (see :mod:`.server`),
a generator of realistic CRM data and a seeded cloud/box pair (see :mod:`.generator`)."""

from .faults import Faults
from .generator import CrmDataset, PortalPair, generate, seed_backup, seed_cloud, start_pair
from .server import Portal, PortalLimits, PortalServer
from .store import CrmStore

__all__ = ["CrmDataset", "CrmStore", "Faults", "Portal", "PortalLimits", "PortalPair", "PortalServer",
           "generate", "seed_backup", "seed_cloud", "start_pair"]
