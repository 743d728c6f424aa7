"""The unpickle guard (rayfin/unpickle_guard.py) installed in the controller actor's process.

Ray unpickles a method's arguments, and every result this process gets back, with
`ray.cloudpickle.loads` as `ray._private.serialization` imported it; an exception (raised by
another actor, or passed as an argument) is unpickled by `ray.exceptions` with its own import of
the same module. `install` swaps both module references for one whose `loads` is the guarded
unpickler; everything else (`dumps`, its error types) is the real module. From then on a pickle
that names anything but data fails to load: the call that carried it fails (the method never
runs; Ray hands the caller a `RaySystemError` naming the refusal), an exception that carried it
arrives as Ray's `UnserializableException`, and the refusal is counted (`refusals`) and logged
once per global.

The controller installs it first thing in its constructor (the constructor's own arguments
come from `rayfin up`); nothing of a desk's runs in that process, so data is all it needs.
Outside a Ray actor (a driver, a unit test) `install` does nothing.

Not a boundary: see docs/security.md, point 7, for the ways around it.
"""
from __future__ import annotations

import logging
from typing import Any

from rayfin.unpickle_guard import Refused, RefusalLog, loads as guarded_loads

log = logging.getLogger("rayfin.unpickle_guard")
REFUSALS = RefusalLog()


class GuardedPickleModule:
    """Stands in for `ray.cloudpickle` inside `ray._private.serialization` and `ray.exceptions`."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def loads(self, data: Any, *, buffers: Any = None, **_: Any) -> Any:
        try:
            return guarded_loads(data, buffers=buffers)
        except Refused as exc:
            if REFUSALS.add(exc):
                log.warning("refused a pickle from a caller: %s", exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _modules() -> list[Any]:
    """The Ray modules whose `pickle` (ray.cloudpickle) unpickles what callers send."""
    import ray.exceptions
    from ray._private import serialization

    return [serialization, ray.exceptions]


def _in_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def install() -> bool:
    """Guard this actor process's unpickling of Ray arguments, results and exceptions. False,
    and nothing changed, outside an actor or if already guarded."""
    if installed() or not _in_actor():
        return False
    for module in _modules():
        current = getattr(module, "pickle", None)
        if not callable(getattr(current, "loads", None)):
            raise RuntimeError(f"{module.__name__} has no pickle.loads to guard: Ray changed; "
                               "see rayfin/controller/unpickle_guard_ray.py")
    for module in _modules():
        module.pickle = GuardedPickleModule(module.pickle)
    return True


def installed() -> bool:
    return all(isinstance(getattr(m, "pickle", None), GuardedPickleModule) for m in _modules())


def refusals() -> dict[str, Any]:
    return REFUSALS.snapshot()
