"""rayfin/unpickle_guard.py: a caller's pickle is unpickled as data only, never as code."""
from __future__ import annotations

import collections
import copyreg
import dataclasses
import datetime
import decimal
import enum
import os
import pickle
import uuid

import numpy as np
import pytest

from rayfin import unpickle_guard as guard
from rayfin.errors import RayfinError
from rayfin.reasons import ReasonCode


class Shell:
    """Runs a command when unpickled: the shape of every pickle exploit."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Exec:
    def __reduce__(self):
        return (exec, ("raise SystemExit('ran')",))


class GetattrChain:
    """getattr(object, '__subclasses__'): the first step to any class in the process."""

    def __reduce__(self):
        return (getattr, (object, "__subclasses__"))


@pytest.mark.parametrize("value", [
    None, True, 3, 2.5, 1 + 2j, "s", b"b", bytearray(b"x"), [1, [2]], (1, 2), {"a": {"b": [1]}}, {1, 2},
    frozenset({3}), slice(1, 2),
    collections.OrderedDict(a=1), collections.Counter("aab"), collections.deque([1]),
    collections.defaultdict(list, {"a": [1]}),
    datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc), datetime.timedelta(seconds=3),
    datetime.date(2026, 1, 2), decimal.Decimal("1.5"), uuid.UUID(int=7),
    ValueError("x"), KeyError("k"),
    ReasonCode.WITHIN_NOMINAL,
])
def test_data_loads_as_it_was(value):
    got = guard.loads(pickle.dumps(value, protocol=5))
    if isinstance(value, BaseException):
        assert type(got) is type(value) and got.args == value.args
    else:
        assert got == value and type(got) is type(value)


def test_rayfin_data_classes_load():
    from rayfin.errors import InvalidRequest
    from serve_apps.quota import LeaseRequest

    req = LeaseRequest(desk="fx", replica="r1", want_tokens=3)
    assert guard.loads(pickle.dumps(req)) == req
    err = guard.loads(pickle.dumps(InvalidRequest("bad", field="spec.gpus")))
    assert isinstance(err, RayfinError)


@pytest.mark.parametrize("payload, named", [
    (Exec(), "builtins.exec"),
    (GetattrChain(), "builtins.getattr"),
    (Shell("/nonexistent/x"), "posix.system"),
    (lambda: 1, "_make_function"),
    (print, "builtins.print"),
    (pickle.loads, "_pickle.loads"),
    (np.arange(3), "numpy"),          # numpy's rebuilders can be made to corrupt memory: not taken
])
def test_code_is_refused_and_named(payload, named):
    import cloudpickle

    data = cloudpickle.dumps(payload, protocol=5)
    with pytest.raises(guard.Refused, match=named.replace(".", r"\.")) as info:
        guard.loads(data)
    assert "data arguments only" in str(info.value)


def test_a_refused_command_never_runs(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(guard.Refused):
        guard.loads(pickle.dumps(Shell(str(marker))))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Shell(str(marker))))      # the same pickle, unguarded, runs it
    assert marker.exists()


def _in(module: str, cls: type) -> type:
    """`cls` as if defined in `module` (what `decide` checks: defined there, not re-exported)."""
    cls.__module__ = module
    return cls


_DC = _in("rayfin.x", dataclasses.make_dataclass("DC", [("x", int)]))
_E = enum.Enum("E", "A", module="rayfin.x", qualname="E")
_NT = collections.namedtuple("NT", "a", module="rayfin.x")
_Err = _in("tests.elsewhere", type("Err", (Exception,), {}))


class _Plain:
    pass


def _fn():
    return 1


@pytest.mark.parametrize("module, name, resolved, allowed, reason", [
    ("builtins", "dict", None, True, "builtin"),
    ("builtins", "ValueError", None, True, "builtin"),
    ("builtins", "eval", None, False, "builtin_not_data"),
    ("builtins", "__import__", None, False, "builtin_not_data"),
    ("builtins", "type", None, False, "builtin_not_data"),
    ("copyreg", "_reconstructor", None, True, "exact"),
    ("os", "system", None, False, "module_not_allowed"),
    ("subprocess", "Popen", None, False, "module_not_allowed"),
    ("numpy", "ndarray", None, False, "module_not_allowed"),
    ("rayfin.x", "DC", _DC, True, "data_class"),
    ("rayfin.x", "E", _E, True, "data_class"),
    ("rayfin.x", "NT", _NT, True, "data_class"),
    ("rayfin.errors", "RayfinError", RayfinError, True, "data_class"),
    ("rayfin.x", "Err", _Err, False, "not_defined_there"),        # an exception re-exported into rayfin
    ("rayfin.x", "Plain", _Plain, False, "not_data"),          # its constructor may do anything
    ("rayfin.x", "fn", _fn, False, "not_data"),
    ("rayfin.x", "Outer.attr", _DC, False, "module_not_allowed"),   # no dotted lookups
    ("rayfinx", "DC", _DC, False, "module_not_allowed"),        # a prefix is not a package
    ("ray.cloudpickle.cloudpickle", "_make_function", _fn, False, "not_data"),
    ("ray.util.placement_group", "PlacementGroup", None, True, "exact"),
])
def test_decide(module, name, resolved, allowed, reason):
    verdict = guard.decide(module, name, lambda m, n: resolved)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


def test_a_name_never_imports_a_module(monkeypatch):
    import sys

    name = "rayfin.never_imported_for_this_test"
    assert name not in sys.modules
    with pytest.raises(guard.Refused, match="module_not_loaded"):
        guard.loads(b"\x80\x05\x8c" + bytes([len(name)]) + name.encode() + b"\x94\x8c\x01X\x94\x93\x94.")
    assert name not in sys.modules


def test_state_is_never_set_on_a_class_or_an_enum_member():
    """A pickle of allowed names only that sets an attribute on a class (here: makes every
    principal act for every desk), or rewrites an enum member, is refused."""
    from rayfin.controller.auth import Principal
    from rayfin.policy.model import JobState

    on_class = (b"\x80\x05\x8c\x16rayfin.controller.auth\x94\x8c\tPrincipal\x94\x93\x94N}\x94\x8c\x0bmay_act_for"
                b"\x94\x8c\x08builtins\x94\x8c\x05slice\x94\x93\x94s\x86\x94b0\x8c\x05token\x94.")
    before = Principal.may_act_for
    with pytest.raises(guard.Refused, match="build_not_allowed"):
        guard.loads(on_class)
    assert Principal.may_act_for is before
    member, value = JobState.RUNNING, JobState.RUNNING.value
    class Rewrite:
        def __reduce__(self):
            return (getattr, (JobState, "RUNNING"), {"_value_": "SUCCEEDED"})

    payload = pickle.dumps(Rewrite())
    with pytest.raises(guard.Refused, match="build_not_allowed"):
        guard.loads(payload)
    assert member.value == value


def test_a_global_that_cannot_be_found_is_refused_as_missing():
    def resolve(m, n):
        raise AttributeError(n)
    assert guard.decide("rayfin.x", "Gone", resolve) == guard.Verdict(False, "missing")


def test_getattr_only_reads_an_enum_member():
    assert guard.enum_member(_E, "A") is _E.A
    for cls, name in ((_E, "__class__"), (object, "__subclasses__"), (_E, 1)):
        with pytest.raises(guard.Refused, match="getattr_not_enum_member"):
            guard.enum_member(cls, name)


def test_refused_pickles_back_to_itself_and_the_log_counts():
    exc = guard.Refused("builtins", "exec", "builtin_not_data")
    back = pickle.loads(pickle.dumps(exc))
    assert (back.module, back.name, back.reason) == ("builtins", "exec", "builtin_not_data")
    log = guard.RefusalLog(keep=2)
    assert log.add(exc) is True and log.add(exc) is False
    log.add(guard.Refused("os", "system", "module_not_allowed"))
    snap = log.snapshot()
    assert snap["refused"] == 3 and snap["by_global"] == {"builtins.exec": 2, "os.system": 1}
    assert [r["global"] for r in snap["recent"]] == ["builtins.exec", "os.system"]


def test_rays_ids_and_placement_groups_load():
    """What the controller gets back from Ray: placement groups and their ids."""
    from ray._raylet import JobID, PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    pg_id = PlacementGroupID.from_random()
    assert guard.loads(pickle.dumps(pg_id)) == pg_id
    job = JobID.from_int(7)
    assert guard.loads(pickle.dumps(job)) == job
    pg = guard.loads(pickle.dumps(PlacementGroup(pg_id, bundle_cache=[{"GPU": 1.0}])))
    assert isinstance(pg, PlacementGroup) and pg.id == pg_id


class _Bomb:
    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return self.how


@pytest.mark.parametrize("how, named", [
    ((list, (range(10**9),)), "builtins.range"),            # 50 bytes that would build 40 GB
    ((bytearray, (10**10,)), "builtins.bytearray"),
    ((copyreg._reconstructor, (bytearray, bytearray, 10**10)), "builtins.bytearray"),
])
def test_a_small_number_never_becomes_gigabytes(how, named):
    data = pickle.dumps(_Bomb(how), protocol=5)
    assert len(data) < 200
    with pytest.raises(guard.Refused, match=named.replace(".", r"\.")):
        guard.loads(data)
