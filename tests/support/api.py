"""The API's controller port over an in-process ControllerCore (what the controller actor does
over Ray), for tests of the FastAPI app without Ray."""
from __future__ import annotations

from rayfin.errors import NotSupported


class CorePort:
    """ControllerPort over a ControllerCore (what the controller actor does over Ray)."""

    def __init__(self, core):
        self.core = core

    async def call(self, method, *args):
        if method == "policing":
            self.core.authenticate(args[0], None, "read policing")
            return {"mode": "enforce", "interval_s": 2.0, "findings": [], "outside_gpus": {}}
        fn = getattr(self.core, method, None)
        if fn is None:
            raise NotSupported(action=method)
        return fn(*args)
