"""Small builders for unit tests: configs and snapshots without YAML files."""
from __future__ import annotations

import copy
from typing import Any

import yaml

from rayfin.config import ROOT_CONFIGS, parse_config

BASE = yaml.safe_load((ROOT_CONFIGS / "test.yaml").read_text())


def config_data(**patch: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for dotted, value in patch.items():
        node = data
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def config(**patch: Any):
    return parse_config(config_data(**patch), "test.yaml")


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def controller_env(tmp_path, **patch: Any):
    """A ControllerCore on the FakeBackend, a SQLite ledger and an injected clock, with job ids
    `<desk>-00000000`, `<desk>-00000001`, ...: (core, backend, clock, ledger)."""
    from rayfin.controller.backend import FakeBackend
    from rayfin.controller.core import ControllerCore
    from rayfin.controller.ledger import SqliteLedger

    clock = Clock()
    ids = iter(range(1000))
    backend = FakeBackend()
    ledger = SqliteLedger(tmp_path / "ledger.db")
    core = ControllerCore(config(**patch), ledger, backend, clock=clock, new_id=lambda d: f"{d}-{next(ids):08x}")
    return core, backend, clock, ledger
