"""The SDK refuses bad arguments itself, naming the field, before any call reaches the API."""
import httpx
import pytest

from rayfin.errors import InvalidRequest
from rayfin.sdk import Client, _ships_by_value


def no_api(request):  # any call to the API would be a test failure
    raise AssertionError(f"{request.method} {request.url} called for an invalid request")


def offline(desk):
    return Client(desk, "fx-demo-token", "http://nowhere", retry_s=0, transport=httpx.MockTransport(no_api))


@pytest.fixture
def client():
    return offline("fx")


def ok(x):
    return x


@pytest.mark.parametrize("kwargs, field", [
    ({"gpus": 0}, "gpus"), ({"gpus": -1}, "gpus"), ({"gpus": 10**6}, "gpus"), ({"gpus": 2.5}, "gpus"),
    ({"gpus": True}, "gpus"), ({"priority": "asap"}, "priority"), ({"comm": "infiniband"}, "comm"),
])
def test_bad_arguments(client, kwargs, field):
    with pytest.raises(InvalidRequest) as err:
        client.submit(ok, 1, **kwargs)
    assert err.value.field == field and err.value.value == kwargs[field]


def test_not_callable(client):
    with pytest.raises(InvalidRequest) as err:
        client.submit("python -m jobs.var_mc")
    assert err.value.field == "fn"


def test_unpicklable_callable_is_a_clear_error(client):
    # A live generator cannot be pickled by anyone (a lock can, once Ray has registered its reducers).
    rows = (i for i in range(3))

    def reads_a_stream():
        return next(rows)

    with pytest.raises(InvalidRequest) as err:
        client.submit(reads_a_stream)
    assert err.value.field == "fn" and "cannot be pickled" in str(err.value) and "to fix" in str(err.value)


@pytest.mark.parametrize("command", ["", "python -c 'oops", "x" * 9000])
def test_bad_entrypoint(client, command):
    with pytest.raises(InvalidRequest) as err:
        client.submit_entrypoint(command)
    assert err.value.field == "entrypoint"


def test_admin_client_cannot_submit():
    with pytest.raises(InvalidRequest) as err:
        offline(None).submit(ok, 1)
    assert err.value.field == "desk"


@pytest.mark.parametrize("module, by_value", [
    ("__main__", False),        # cloudpickle already ships __main__ by value
    ("jobs.var_mc", False),     # installed with rayfin: importable on every worker
    ("numpy.linalg", False),
    ("json", False),            # standard library
    ("my_notebook_helpers", True),
    ("test_desk_pools", True),
])
def test_which_functions_ship_by_value(module, by_value):
    assert _ships_by_value(module) is by_value


# ---- one JobSpec for every edge (issue 19): the SDK, the API and the controller refuse alike ----
@pytest.mark.parametrize("fields, field, allowed", [
    ({"gpus": 0}, "gpus", "a whole number of GPUs from 1 to 4096"),
    ({"gpus": 2.5}, "gpus", "a whole number of GPUs from 1 to 4096"),
    ({"priority": "asap"}, "priority", "one of batch, normal, critical"),
    ({"comm": "infiniband"}, "comm", "one of none, allreduce"),
    ({"retries": 101}, "retries", "a whole number from 0 to 100"),
    ({"job_id": "FX-1"}, "job_id", "<desk>-<8 to 32 hex digits>"),
    ({"dist_backend": "mpi"}, "dist_backend", None),
    ({"workers": 3, "gpus": 4}, "workers", None),
    ({"kind": "shell"}, "kind", "'callable' or 'entrypoint'"),
    ({"payload": b""}, "fn", "a picklable Python callable"),
    ({"kind": "entrypoint", "payload": "python -c 'oops"}, "entrypoint", None),
    ({"colour": "red"}, "colour", None),
])
def test_jobspec_names_the_field_and_what_is_allowed(fields, field, allowed):
    from rayfin.jobspec import JobSpec

    with pytest.raises(InvalidRequest) as err:
        JobSpec.parse({"kind": "callable", "payload": b"x", **fields})
    assert err.value.field == field and err.value.allowed
    if allowed is not None:
        assert err.value.allowed == allowed
    if field in fields:
        assert err.value.value == fields[field]


def test_jobspec_normalises_and_takes_defaults_from_the_config():
    from rayfin.jobspec import JobSpec
    from rayfin.policy.model import CommProfile, Priority

    spec = JobSpec.parse({"kind": "callable", "payload": bytearray(b"x"), "gpus": 4.0, "workers": "per_gpu",
                          "comm": "allreduce"})
    assert (spec.gpus, spec.workers, spec.unit, spec.comm, spec.payload) == (4, 4, 1, CommProfile.ALLREDUCE, b"x")
    assert spec.priority is None and spec.retries is None
    filled = spec.with_defaults("batch", 2)
    assert (filled.priority, filled.retries) == (Priority.BATCH, 2)
    assert JobSpec.parse(filled) == filled                        # a validated spec passes again unchanged
    with pytest.raises(InvalidRequest) as err:
        JobSpec.parse("not a mapping")
    assert err.value.field == "spec"
