"""The unpickle guard (rayfin/unpickle_guard.py) installed in this Ray actor's process.

Ray unpickles a method's arguments, and every result this process gets back, with
`ray.cloudpickle.loads` as `ray._private.serialization` imported it. `install` swaps that module
reference for one whose `loads` is the guarded unpickler (where `scope` says so); everything
else (`dumps`, its error types) is the real module. From then on a pickle that names anything
but data fails to load: the call that carried it fails with `Refused` (the method never runs),
the refusal is counted (`refusals`) and logged once per global.

- The controller installs it for its whole process, first thing in its constructor (the
  constructor's own arguments come from `rayfin up`): nothing of a desk's runs there.
- A job's runner and gang workers run the desk's own code, whose objects are anything, so they
  install it with `scope=on_ray_task_thread`: only what Ray unpickles on its own task threads
  (the arguments of the runner's methods, which a hostile caller sends) is guarded; the job's
  threads, which the runner starts as Python threads, unpickle as before.
- Outside a Ray actor (a driver, a unit test that builds one of these classes) it does nothing.

Not guarded: Ray's error path (an exception another actor raised comes back through
`ray.exceptions`' own unpickling), and explicit `cloudpickle.loads` calls of a job's payload.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from rayfin.unpickle_guard import Refused, RefusalLog, loads as guarded_loads

log = logging.getLogger("rayfin.unpickle_guard")
REFUSALS = RefusalLog()


def on_ray_task_thread() -> bool:
    """True on a thread Python did not start: Ray runs an actor's tasks (and unpickles their
    arguments) on its own threads, which Python sees as dummy threads, or on the main thread."""
    t = threading.current_thread()
    return t is threading.main_thread() or isinstance(t, threading._DummyThread)


class GuardedPickleModule:
    """Stands in for `ray.cloudpickle` inside `ray._private.serialization`."""

    def __init__(self, real: Any, scope: Callable[[], bool] | None = None) -> None:
        self.real = real
        self.scope = scope

    def loads(self, data: Any, *, buffers: Any = None, **kwargs: Any) -> Any:
        if self.scope is not None and not self.scope():
            return self.real.loads(data, buffers=buffers, **kwargs)
        try:
            return guarded_loads(data, buffers=buffers)
        except Refused as exc:
            if REFUSALS.add(exc):
                log.warning("refused a pickle from a caller: %s", exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _in_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def install(scope: Callable[[], bool] | None = None) -> bool:
    """Guard this actor process's unpickling of Ray arguments and results (where `scope()` is
    true, else everywhere). False, and nothing changed, outside an actor or if already guarded."""
    from ray._private import serialization

    current = serialization.pickle
    if isinstance(current, GuardedPickleModule) or not _in_actor():
        return False
    if not callable(getattr(current, "loads", None)):
        raise RuntimeError("ray._private.serialization has no pickle.loads to guard: Ray changed; "
                           "see rayfin/unpickle_guard_ray.py")
    serialization.pickle = GuardedPickleModule(current, scope)
    return True


def installed() -> bool:
    from ray._private import serialization

    return isinstance(serialization.pickle, GuardedPickleModule)


def refusals() -> dict[str, Any]:
    return REFUSALS.snapshot()
