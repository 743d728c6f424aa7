import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Ray workers import rayfin/jobs by module path: make the checkout importable for them too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


# -- real servers from the system packages, one of each per test run -------------------------
# Started on first use by a test that asks for them (tests/ledger, the GCS and Prometheus
# integration tests); `make test` installs the packages first (make system-deps).
import itertools  # noqa: E402

import pytest  # noqa: E402

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server():
    from rayfin.local_servers import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server: (url with no password, password)."""
    return postgres_server.create_database(f"t{os.getpid()}_{next(_databases)}"), postgres_server.password


@pytest.fixture(scope="session")
def redis_server():
    from rayfin.local_servers import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()
