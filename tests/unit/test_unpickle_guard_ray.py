"""rayfin/unpickle_guard_ray.py without a cluster: where the guard applies, and that it stays out
of a process that is not a Ray actor (a driver, this test run)."""
from __future__ import annotations

import _thread
import os.path
import pickle
import threading

import pytest

from rayfin import unpickle_guard_ray as ugr
from rayfin.unpickle_guard import Refused

A_FUNCTION = pickle.dumps(os.path.join)     # names a function: refused when guarded


def test_scoped_out_threads_unpickle_as_before_and_scoped_in_ones_are_guarded():
    inside = {"now": False}
    module = ugr.GuardedPickleModule(pickle, scope=lambda: inside["now"])
    assert module.loads(A_FUNCTION) is os.path.join                  # out of scope: the real loads
    inside["now"] = True
    before = ugr.refusals()["refused"]
    with pytest.raises(Refused, match="posixpath.join"):
        module.loads(A_FUNCTION)
    assert ugr.refusals()["refused"] == before + 1
    assert module.loads(pickle.dumps({"a": [1]})) == {"a": [1]}       # data still loads
    assert module.dumps is pickle.dumps                                # the rest is the real module


def test_without_a_scope_everything_is_guarded():
    with pytest.raises(Refused):
        ugr.GuardedPickleModule(pickle).loads(A_FUNCTION)


def test_ray_task_threads_are_the_ones_python_did_not_start():
    assert ugr.on_ray_task_thread() is True                            # the main thread
    seen: dict[str, bool] = {}
    t = threading.Thread(target=lambda: seen.update(python=ugr.on_ray_task_thread()))
    t.start(), t.join()
    done = threading.Event()

    def foreign() -> None:          # a thread started outside `threading`, as Ray's are
        seen["foreign"] = ugr.on_ray_task_thread()
        done.set()

    _thread.start_new_thread(foreign, ())
    assert done.wait(10)
    assert seen == {"python": False, "foreign": True}


def test_install_does_nothing_outside_a_ray_actor():
    from ray._private import serialization

    real = serialization.pickle
    assert ugr.install() is False
    assert serialization.pickle is real and not ugr.installed()
