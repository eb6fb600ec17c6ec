"""deploy/docker-compose.yaml, checked offline (Docker is not available in CI): the
services, the databases the stack expects, the drivers, loopback-only ports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hamnet.ops.stack import DATABASES

COMPOSE = Path(__file__).resolve().parents[3] / "deploy" / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_the_databases_they_share(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "prefect"}
    init = compose["configs"]["create-databases"]["content"]
    assert set(re.findall(r"CREATE DATABASE (\w+);", init)) == set(DATABASES.values())
    mlflow_url = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow_url.startswith("postgresql+psycopg://hamnet:")
    assert mlflow_url.endswith(f"@postgres:5432/{DATABASES['mlflow']}")
    prefect_url = services["prefect"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_url.startswith("postgresql+asyncpg://hamnet:")
    assert prefect_url.endswith(f"@postgres:5432/{DATABASES['prefect']}")
    for name in ("mlflow", "prefect"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]


def test_the_password_is_required_and_ports_stay_on_loopback(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "${HAMNET_DB_PASSWORD:?" in text and "POSTGRES_HOST_AUTH_METHOD" not in text
    for service in compose["services"].values():
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), port
