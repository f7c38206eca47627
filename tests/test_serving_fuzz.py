"""The HTTP API fuzzed from its own OpenAPI document (schemathesis, in-process ASGI, a tiny target).

Bodies valid and invalid against the schema (and path parameters) are generated for every operation:
no request may get a 5xx, and every response must be one the document declares (status, content
type, body schema). Bounded: a fixed number of examples per operation, derandomized, no database.
"""

from __future__ import annotations

import re

import pytest
import schemathesis  # the test extra installs it (pyproject.toml): this test runs in CI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from conftest_serving import one_torch_thread, tiny_target

MODEL = "tiny-chat"
EXAMPLES = 25  # per operation and mode: about 20 s in all on a shared 2-core machine
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api():
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.serving.app import create_app

    with one_torch_thread():
        app = create_app(SpeculativeGenerator(tiny_target()), MODEL, 4, allowed_hosts=("testserver",),
                         max_queue=4)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error_and_every_reply_fits_the_schema(case):
    with one_torch_thread():
        case.call_and_validate(checks=CHECKS)


def test_the_document_covers_every_endpoint(api):
    served = {(method, re.sub(r":\w+}", "}", route.path))  # /v1/models/{model_id:path}: a Starlette converter
              for route in api.app.routes if isinstance(route, APIRoute)
              for method in route.methods if route.path != "/openapi.json"}
    documented = {(method.upper(), path) for path, item in api.raw_schema["paths"].items() for method in item}
    assert documented == served and len(served) == 5
    assert api.raw_schema["openapi"] == "3.1.0"
