"""The error the sandbox portal's stores raise for a request the portal would refuse."""


class StoreError(Exception):
    """A request the portal would refuse (wire error code + description)."""

    def __init__(self, code: str, description: str) -> None:
        self.code, self.description = code, description
        super().__init__(f"{code}: {description}")
