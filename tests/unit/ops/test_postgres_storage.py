"""Optuna storage URLs for PostgreSQL: the psycopg driver, fail-fast connections."""

from __future__ import annotations

import time

import pytest

from hamnet.compress.search.storage import (
    POSTGRES_CONNECT_TIMEOUT_SECONDS,
    _storage_url_and_kwargs,
    open_study,
)
from hamnet.core.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("postgresql://team:pw@db:5432/optuna", "postgresql+psycopg://team:pw@db:5432/optuna"),
        ("postgres://team:pw@db/optuna", "postgresql+psycopg://team:pw@db/optuna"),
        ("postgresql+psycopg://team:pw@db/optuna", "postgresql+psycopg://team:pw@db/optuna"),
    ],
)
def test_postgres_urls_get_psycopg_and_fail_fast_options(url: str, normalised: str) -> None:
    got, kwargs, shown = _storage_url_and_kwargs(url)
    assert got == normalised
    assert kwargs == {
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS},
    }
    assert "pw" not in shown and "***" in shown


def test_another_named_driver_is_kept_without_psycopg_options() -> None:
    got, kwargs, _ = _storage_url_and_kwargs("postgresql+pg8000://team:pw@db/optuna")
    assert got == "postgresql+pg8000://team:pw@db/optuna"
    assert kwargs == {"pool_pre_ping": True}


def test_a_postgres_server_that_is_down_is_a_quick_clear_error() -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        open_study("postgresql://team:s3cret@127.0.0.1:1/optuna", "s", ["minimize"], None, None)
    assert time.perf_counter() - started < POSTGRES_CONNECT_TIMEOUT_SECONDS
    message = str(info.value)
    assert "study storage 'postgresql://team:***@127.0.0.1:1/optuna' cannot be opened" in message
    assert "OperationalError" in message and "s3cret" not in message
