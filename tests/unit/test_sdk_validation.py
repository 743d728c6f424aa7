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
