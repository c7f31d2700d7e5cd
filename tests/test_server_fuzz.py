"""Fuzz the explorer's JSON API from its own OpenAPI schema (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from featuretree.server import ServerSettings, create_app  # noqa: E402
from featuretree.server.session import Limits  # noqa: E402

APP = create_app(ServerSettings(models=("toy_squares",), limits=Limits(max_upload_bytes=512 * 1024, max_pixels=2_000_000)))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_fuzz_no_server_errors(case):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
