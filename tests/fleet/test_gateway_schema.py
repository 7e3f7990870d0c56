"""Schemathesis over the gateway's own OpenAPI schema, against the running gateway and real fleet:
whatever the generated requests, the gateway answers with no server error (5xx)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from localfleet.fleet import LocalFleet
from tests.fleet.test_gateway import API_KEY, BODY_LIMIT, MODEL, Gateway, start_gateway

pytestmark = pytest.mark.fleet

EXAMPLES_PER_OPERATION = 60


@pytest.fixture(scope="module")
def schema_gateway(fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = start_gateway(
        fleet,
        tmp_path_factory.mktemp("schema-gateway") / "gateway.log",
        EMBED_API_KEYS=API_KEY,
        EMBED_MAX_REQUEST_BYTES=str(BODY_LIMIT),
        EMBED_GATEWAY_TIMEOUT_S="30",
    )
    yield server
    server.process.terminate()
    server.process.wait(timeout=30)


def test_no_server_errors(schema_gateway: Gateway) -> None:
    schema = schemathesis.openapi.from_url(f"{schema_gateway.url}/openapi.json")
    calls: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        exercise(result.ok(), calls)
    operations = {label for label, _ in calls}
    statuses = sorted({status for _, status in calls})
    assert len(operations) >= 8 and len(calls) >= 8 * 10, (operations, len(calls))
    assert all(status < 500 for status in statuses), statuses
    counts = dict(Counter(status for _, status in calls))
    print(f"schemathesis: {len(calls)} requests, {len(operations)} operations, statuses {counts}")


def exercise(operation: Any, calls: list[tuple[str, int]]) -> None:
    """Generated requests for one operation; every answer must be below 500."""

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def call(case: schemathesis.Case) -> None:
        if isinstance(case.body, dict) and "model" in case.body and len(calls) % 2:
            case.body["model"] = MODEL  # half the time the fleet's model, so valid requests run too
        response = case.call(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        calls.append((operation.label, response.status_code))
        status = response.status_code
        assert status < 500, f"{operation.label}: {status} {response.text[:300]}"

    call()
