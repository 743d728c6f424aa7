"""Schemathesis over the API's OpenAPI document, in process (the real FastAPI app on the
controller core with FakeBackend): no generated input, valid or not, gets a 5xx, and every
answer matches the documented schema. tests/integration/test_api_http.py runs it over real HTTP."""
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from rayfin.api import ApiLimits, build_app
from rayfin.controller.backend import FakeBackend
from rayfin.controller.core import ControllerCore
from rayfin.controller.ledger import SqliteLedger
from tests.support.api import CorePort
from tests.support.builders import config



class GangPort(CorePort):
    """Also `results` and `logs` as the gang-workers controller answers them (issue 15's contract),
    so their routes are generated against too; test_api checks the 501 of a controller without."""

    async def call(self, method, *args):
        if method == "results":
            r = self.core.result(*args)
            return {"state": r["state"], "reason": r["reason"], "error": r["error"], "results": [r["result"]]}
        if method == "logs":
            self.core.status(args[0], args[1])
            return {"lines": []}
        return await super().call(method, *args)


_core = ControllerCore(config(), SqliteLedger(Path(tempfile.mkdtemp(prefix="rayfin-st-")) / "l.db"), FakeBackend())
APP = build_app(GangPort(_core), ApiLimits(max_payload_bytes=64 * 1024, max_result_bytes=64 * 1024))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_for_any_generated_input(case):
    for token in ("fx-demo-token", "admin-demo-token"):
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"},
                               checks=[not_a_server_error, status_code_conformance, response_schema_conformance])
        _core.cycle()    # let admitted work move, so later examples meet jobs in every state
