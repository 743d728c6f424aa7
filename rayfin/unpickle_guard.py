"""What the controller may unpickle from a caller: data, never code.

Ray passes a method's arguments as pickles, and unpickling runs whatever callable the pickle
names. Any job on the cluster can call any actor it can name, so without a guard desk code runs
inside the actor it calls before the method has looked at a token: a pickled `exec("...")` sent
to a controller method that refuses the call has already run in the controller, which holds the
ledger and the runner-secret seed (docs/security.md, point 7).

`GuardedUnpickler` resolves a pickle's globals through `decide`, which allows only:
- the built-in data types (int, str, list, dict, ...) and the built-in exception classes;
- a short list of standard-library data types and pickle helpers (`EXACT`: datetime, Decimal,
  UUID, OrderedDict, `copyreg`'s object rebuilders), rayfin's error rebuilder, Ray's rebuilders
  of object refs and actor handles, its id types and placement groups;
- data classes defined in rayfin's packages or Ray's (`DATA_MODULES`): dataclasses, pydantic
  models, enums, named tuples and exceptions, found in a module this process has already
  imported (a name never imports anything) and defined there (not re-exported).

It also refuses to set state (`BUILD`) on anything but an instance of a class it resolved in the
same pickle: not on a class, an enum member, a module or a function, so a pickle built from
allowed names cannot rewrite the process's classes. Everything else (a function, `exec`,
`os.system`, `getattr` beyond an enum member, a cloudpickled lambda, a class of another package)
is refused with `Refused`, which names it.

This raises the cost of one attack; it is not a security boundary (docs/security.md lists the
ways around it). Pure: no Ray; the Ray adapter is `rayfin.controller.unpickle_guard_ray`.
"""
from __future__ import annotations

import builtins
import dataclasses
import enum
import io
import pickle
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# Not `bytes`, `bytearray` or `range`: pickle protocol 5 writes bytes and bytearrays as data, and
# as callables they turn a small number into gigabytes (`bytearray(10**10)`, `list(range(10**9))`).
SAFE_BUILTINS = frozenset({
    "bool", "int", "float", "complex", "str", "list", "tuple", "dict", "set", "frozenset", "slice",
    "NoneType", "Ellipsis", "NotImplemented", "object",
})

EXACT = frozenset({
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"),
    ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "Counter"),
    ("collections", "defaultdict"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("uuid", "UUID"),
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
    reason: str   # builtin | exact | data_class | builtin_not_data | not_data | not_defined_there |
    #               module_not_loaded | module_not_allowed | missing


class Refused(pickle.UnpicklingError):
    """A pickle named something rayfin does not unpickle from a caller."""

    def __init__(self, module: str, name: str, reason: str) -> None:
        self.module, self.name, self.reason = module, name, reason
        super().__init__(f"refused to unpickle {module}.{name} ({reason}): the controller takes data "
                         "arguments only (docs/security.md, point 7)")

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:     # goes back to the caller as itself
        return Refused, (self.module, self.name, self.reason)


def data_class(obj: Any) -> bool:
    """A class whose instances are data: a dataclass, a pydantic model, an enum, a named tuple or
    an exception. Not a function, and not any other class."""
    if not isinstance(obj, type):
        return False
    if dataclasses.is_dataclass(obj) or issubclass(obj, (enum.Enum, BaseException)):
        return True
    if issubclass(obj, tuple) and hasattr(obj, "_fields"):
        return True
    return any(c.__module__.startswith("pydantic") and c.__name__ == "BaseModel" for c in obj.__mro__[1:])


def _in_data_modules(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in DATA_MODULES)


def decide(module: str, name: str, resolve: Callable[[str, str], Any]) -> Verdict:
    """May a pickle's global `module.name` be looked up? `resolve` finds it in a module already
    imported (it raises KeyError for one that is not: a name never imports anything)."""
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
        except KeyError:
            return Verdict(False, "module_not_loaded")
        except AttributeError:
            return Verdict(False, "missing")
        if not data_class(obj):
            return Verdict(False, "not_data")
        if getattr(obj, "__module__", None) != module or getattr(obj, "__qualname__", None) != name:
            return Verdict(False, "not_defined_there")     # re-exported from another package
        return Verdict(True, "data_class")
    return Verdict(False, "module_not_allowed")


def _loaded(module: str, name: str) -> Any:
    return getattr(sys.modules[module], name)


def enum_member(cls: Any, name: str) -> Any:
    """What `builtins.getattr` means in a guarded pickle: an enum member by name, as newer
    Pythons pickle enum members (`getattr(cls, name)`); any other use of getattr is refused (it
    reaches any attribute of anything: the start of every pickle exploit chain)."""
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) and name in cls.__members__:
        return cls.__members__[name]
    raise Refused("builtins", "getattr", "getattr_not_enum_member")


_NEVER_BUILT = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, enum.Enum)


class GuardedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcodes can be overridden, unlike the C one's), with
    `find_class` through `decide` and `BUILD` only on instances of classes resolved here."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, *, buffers: Iterable[Any] | None = None) -> None:
        super().__init__(file, fix_imports=False, buffers=buffers)
        self._resolved: set[int] = set()     # ids of the classes this pickle named (kept alive by the module)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return enum_member
        verdict = decide(module, name, _loaded)
        if not verdict.allowed:
            raise Refused(module, name, verdict.reason)
        obj = _loaded(module, name) if verdict.reason == "data_class" else super().find_class(module, name)
        if isinstance(obj, type):
            self._resolved.add(id(obj))
        return obj

    def load_build(self) -> None:
        inst = self.stack[-2]    # type: ignore[attr-defined]  # the pure-Python unpickler's stack
        if isinstance(inst, _NEVER_BUILT) or id(type(inst)) not in self._resolved:
            kind = type(inst)
            raise Refused(kind.__module__, kind.__qualname__, "build_not_allowed")
        super().load_build()     # type: ignore[misc]

    dispatch[pickle.BUILD[0]] = load_build    # type: ignore[assignment]


def loads(data: bytes | memoryview, *, buffers: Iterable[Any] | None = None) -> Any:
    """`pickle.loads` that refuses anything but data (`decide`, `GuardedUnpickler.load_build`)."""
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
