"""What rayfin's own processes may unpickle from a caller: data, never code.

Ray passes a method's arguments as pickles, and unpickling runs whatever callable the pickle
names. Any job on the cluster can call any actor it can name, so without a guard desk code runs
inside the actor it calls before the method has looked at a token: a pickled
`exec("...")` sent to a controller method that refuses the call has already run in the
controller, which holds the ledger and the runner-secret seed (docs/security.md).

`GuardedUnpickler` resolves a pickle's globals through `decide`, which allows only:
- the built-in data types (int, str, list, dict, ...), the built-in exception classes;
- a short list of standard-library data types and pickle helpers (`EXACT`: datetime, Decimal,
  UUID, OrderedDict, `copyreg`'s object rebuilders), numpy's array rebuilders, and Ray's own
  rebuilders of object refs and actor handles;
- data classes of rayfin's own packages and Ray's (`DATA_MODULES`): dataclasses, pydantic models,
  enums, named tuples and exceptions, looked up by type, never a function and never a class that
  does work when built (an actor, a server).

Everything else (a function, `exec`, `os.system`, a cloudpickled lambda, a class of another
package) is refused with `Refused`, which names it. Pure: no Ray; the Ray adapter is
`rayfin.controller.unpickle_guard_ray`.
"""
from __future__ import annotations

import builtins
import dataclasses
import enum
import importlib
import io
import pickle
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

SAFE_BUILTINS = frozenset({
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict", "set",
    "frozenset", "slice", "range", "NoneType", "Ellipsis", "NotImplemented", "object",
})

EXACT = frozenset({
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"),
    ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "Counter"),
    ("collections", "defaultdict"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("uuid", "UUID"), ("fractions", "Fraction"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # rayfin's typed errors keep their fields through Ray with this rebuilder (rayfin/errors.py)
    ("rayfin.errors", "_rebuild"),
    # Ray's rebuilders of the references it lets one pass inside an argument
    ("ray._private.serialization", "_object_ref_deserializer"),
    ("ray._private.serialization", "_actor_handle_deserializer"),
    # Ray's own records that are plain classes: a placement group (an id and a cache of bundles),
    # and its ids (built from bytes)
    ("ray.util.placement_group", "PlacementGroup"),
    *(("ray._raylet", f"{kind}ID") for kind in ("PlacementGroup", "Actor", "Job", "Node", "Task", "Object", "Worker",
                                               "Cluster", "Unique", "Function", "ActorClass")),
})

# rayfin's own packages, and Ray's (the controller gets Ray's records back: a placement group, Serve's
# options): their data classes may travel (looked up by type, see `data_class`).
DATA_MODULES = ("rayfin", "placement", "serve_apps", "ray")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str          # builtin | exact | data_class | builtin_not_data | not_data | module_not_allowed | missing


class Refused(pickle.UnpicklingError):
    """A pickle named something rayfin does not unpickle from a caller."""

    def __init__(self, module: str, name: str, reason: str) -> None:
        self.module, self.name, self.reason = module, name, reason
        super().__init__(f"refused to unpickle {module}.{name} ({reason}): rayfin's actors take data "
                         "arguments only (docs/security.md, 'Arguments are data')")

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:     # goes back to the caller as itself
        return Refused, (self.module, self.name, self.reason)


def data_class(obj: Any) -> bool:
    """A class whose instances are data: a dataclass, a pydantic model, an enum, a named tuple or
    an exception. Not a function, and not any other class (its constructor may do work)."""
    if not isinstance(obj, type):
        return False
    if dataclasses.is_dataclass(obj) or issubclass(obj, (enum.Enum, BaseException)):
        return True
    if issubclass(obj, tuple) and hasattr(obj, "_fields"):
        return True
    return any(c.__module__.startswith("pydantic") and c.__name__ == "BaseModel" for c in obj.__mro__)


def _in_data_modules(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in DATA_MODULES)


def decide(module: str, name: str, resolve: Callable[[str, str], Any]) -> Verdict:
    """May a pickle's global `module.name` be looked up? `resolve` imports it (for rayfin's own
    modules only, to check it is a data class)."""
    if module == "builtins":
        obj = getattr(builtins, name, None)
        if name in SAFE_BUILTINS:
            return Verdict(True, "builtin")
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return Verdict(True, "builtin")
        return Verdict(False, "builtin_not_data")
    if (module, name) in EXACT:
        return Verdict(True, "exact")
    if _in_data_modules(module) and "." not in name:
        try:
            obj = resolve(module, name)
        except (ImportError, AttributeError):
            return Verdict(False, "missing")
        return Verdict(True, "data_class") if data_class(obj) else Verdict(False, "not_data")
    return Verdict(False, "module_not_allowed")


def _resolve(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def enum_member(cls: Any, name: str) -> Any:
    """What `builtins.getattr` means in a guarded pickle: an enum member by name, as newer
    Pythons pickle enum members (`getattr(cls, name)`); any other use of getattr is refused (it
    reaches any attribute of anything: the start of every pickle exploit chain)."""
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) and name in cls.__members__:
        return cls.__members__[name]
    raise Refused("builtins", "getattr", "getattr_not_enum_member")


class GuardedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return enum_member
        verdict = decide(module, name, _resolve)
        if not verdict.allowed:
            raise Refused(module, name, verdict.reason)
        return super().find_class(module, name)


def loads(data: bytes | memoryview, *, buffers: Iterable[Any] | None = None) -> Any:
    """`pickle.loads` that refuses anything but data (`decide`)."""
    return GuardedUnpickler(io.BytesIO(data), buffers=buffers).load()


class RefusalLog:
    """What the guard refused in this process: a count per `module.name`, and the last few."""

    def __init__(self, keep: int = 20) -> None:
        self.counts: dict[str, int] = {}
        self.recent: list[dict[str, str]] = []
        self._keep = keep
        self._lock = threading.Lock()

    def add(self, refused: Refused) -> bool:
        """Record one; True the first time this global is refused (worth a warning)."""
        key = f"{refused.module}.{refused.name}"
        with self._lock:
            first = key not in self.counts
            self.counts[key] = self.counts.get(key, 0) + 1
            self.recent = [*self.recent, {"global": key, "reason": refused.reason}][-self._keep:]
        return first

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"refused": sum(self.counts.values()), "by_global": dict(self.counts), "recent": list(self.recent)}


__all__ = ["DATA_MODULES", "EXACT", "GuardedUnpickler", "Refused", "RefusalLog", "Verdict", "data_class", "decide",
           "enum_member", "loads"]
