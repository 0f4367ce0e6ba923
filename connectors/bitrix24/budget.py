"""Moved to :mod:`connectors.budget` (it is not specific to one platform); kept while callers switch."""

from connectors.budget import RequestBudget

__all__ = ["RequestBudget"]
