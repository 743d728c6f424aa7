"""rayfin/controller/unpickle_guard_ray.py without a cluster: the stand-in module guards `loads`, passes
the rest through, and nothing is installed in a process that is not a Ray actor (this one)."""
from __future__ import annotations

import os.path
import pickle

import pytest

from rayfin.controller import unpickle_guard_ray as ugr
from rayfin.unpickle_guard import Refused

A_FUNCTION = pickle.dumps(os.path.join)     # names a function: refused when guarded


def test_the_stand_in_guards_loads_counts_refusals_and_passes_the_rest_through():
    module = ugr.GuardedPickleModule(pickle)
    before = ugr.refusals()["refused"]
    with pytest.raises(Refused, match="posixpath.join"):
        module.loads(A_FUNCTION)
    assert ugr.refusals()["refused"] == before + 1
    assert "posixpath.join" in ugr.refusals()["by_global"]
    assert module.loads(pickle.dumps({"a": [1]})) == {"a": [1]}       # data still loads
    assert module.dumps is pickle.dumps                                # the rest is the real module


def test_install_does_nothing_outside_a_ray_actor():
    import ray.exceptions
    from ray._private import serialization

    real = (serialization.pickle, ray.exceptions.pickle)
    assert ugr.install() is False
    assert (serialization.pickle, ray.exceptions.pickle) == real and not ugr.installed()
