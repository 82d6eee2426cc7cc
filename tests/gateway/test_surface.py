"""What the gateway's runner port shows (issue 16, item 7): no interactive docs or schema unless
switched on, no ``/metrics`` (every company's LLM usage): that is served by a separate app on
its own port, which the tenant NetworkPolicy does not open to runners (tested on the cluster
in tests/operator/test_operator_real_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from regtask_gateway.app import create_gateway_app, create_metrics_app
from regtask_gateway.runnerauth import StaticAuthenticator
from regtask_gateway.settings import GatewaySettings
from regtask_gateway.taskspec import InMemoryTaskSpecSource

pytestmark = pytest.mark.unit

DOCS = ["/docs", "/redoc", "/openapi.json"]


def gateway(**settings: object) -> TestClient:
    # No request below reaches Redis (the client connects lazily).
    app = create_gateway_app(
        GatewaySettings.model_validate({"redis_url": "redis://127.0.0.1:1/0", **settings}),
        spec_source=InMemoryTaskSpecSource(),
        authenticator=StaticAuthenticator(),
    )
    return TestClient(app)


@pytest.fixture
def default_gateway() -> Iterator[TestClient]:
    with gateway() as client:
        yield client


def test_docs_are_off_by_default() -> None:
    assert GatewaySettings().docs_enabled is False


@pytest.mark.parametrize("path", DOCS)
def test_no_docs_or_schema_on_the_runner_port_by_default(
    default_gateway: TestClient, path: str
) -> None:
    assert default_gateway.get(path).status_code == 404


@pytest.mark.parametrize("path", DOCS)
def test_docs_when_switched_on(path: str) -> None:
    with gateway(docs_enabled=True) as client:
        assert client.get(path).status_code == 200


def test_the_docs_switch_reads_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGTASK_GATEWAY_DOCS", "true")
    monkeypatch.setenv("REGTASK_GATEWAY_METRICS_PORT", "9300")
    settings = GatewaySettings()
    assert (settings.docs_enabled, settings.metrics_port) == (True, 9300)


def test_no_metrics_on_the_runner_port(default_gateway: TestClient) -> None:
    assert default_gateway.get("/metrics").status_code == 404


def test_metrics_on_the_metrics_app() -> None:
    with gateway() as client:
        state = client.app.state.gateway  # type: ignore[attr-defined]
        state.metrics.llm_requests.labels("acme", "chat", "allowed").inc()
        metrics = TestClient(create_metrics_app(client.app))  # type: ignore[arg-type]
        answer = metrics.get("/metrics")
    assert answer.status_code == 200
    assert 'regtask_llm_requests_total{company="acme",kind="chat",outcome="allowed"} 1.0' in (
        answer.text
    )
    # Nothing of the runner API on the metrics port, and no docs there either.
    assert metrics.get("/v1/task").status_code == 404
    assert metrics.get("/openapi.json").status_code == 404


def test_metrics_before_the_gateway_started_is_503() -> None:
    app = gateway().app
    answer = TestClient(create_metrics_app(app)).get("/metrics")  # type: ignore[arg-type]
    assert answer.status_code == 503
