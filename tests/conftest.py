import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Ray workers import rayfin/jobs by module path: make the checkout importable for them too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from tests.support import procs  # noqa: E402


# -- the reaper: nothing this test run starts outlives it -------------------------------------
# Fixtures stop what they started; when they cannot run (pytest-timeout's thread method ends the
# process with os._exit, a CI kill), a watcher in its own session stops every process it saw
# below pytest, and the pids registered with it (servers that detach). RAYFIN_TEST_REAPER=0: off.
REAPER_REGISTRY: str | None = None


def pytest_configure(config):
    global REAPER_REGISTRY
    if os.environ.get("RAYFIN_TEST_REAPER", "1") == "0":
        return
    if hasattr(config, "workerinput"):
        # An xdist worker: the reaper of the main pytest process watches it (a descendant);
        # servers that detach are registered in that reaper's file.
        REAPER_REGISTRY = os.environ.get("RAYFIN_TEST_REAPER_REGISTRY")
        return
    fd, REAPER_REGISTRY = tempfile.mkstemp(prefix="rayfin-test-reaper-")
    os.close(fd)
    os.environ["RAYFIN_TEST_REAPER_REGISTRY"] = REAPER_REGISTRY
    config._rayfin_reaper = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "tests" / "support" / "procs.py"), "--watch", str(os.getpid()),
         "--registry", REAPER_REGISTRY],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def pytest_unconfigure(config):
    """Say what the fixtures left running (the reaper stops it once this process exits)."""
    reaper = getattr(config, "_rayfin_reaper", None)
    if reaper is None:
        return
    left = [p for p in procs.descendants(os.getpid()) if p[0] != reaper.pid]
    if left:
        print(f"\nrayfin tests: {len(left)} processes left running at exit; the reaper stops them: "
              f"{sorted(p[0] for p in left)[:20]}", file=sys.stderr)


# -- two lanes under pytest-xdist (make test: -n 2): tests/support/lanes.py ----------------------
def pytest_collection_modifyitems(items):
    """The integration tests that run beside the others (lanes.BESIDE_FILES) come last, so that in
    their lane they start once the tests without Ray are done (the same order in every worker)."""
    from tests.support.lanes import runs_beside

    items[:] = [i for i in items if not runs_beside(i.nodeid)] + [i for i in items if runs_beside(i.nodeid)]


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    from tests.support.lanes import lane_of

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_of(nodeid)

    return Lanes(config, log)


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
    try:
        pidfile = server.dir / "data" / "postmaster.pid"     # pg_ctl detaches the postmaster
        procs.register(REAPER_REGISTRY, int(pidfile.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server: (url with no password, password)."""
    return postgres_server.create_database(f"t{os.getpid()}_{next(_databases)}"), postgres_server.password


@pytest.fixture(scope="session")
def redis_server():
    from rayfin.local_servers import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
