"""Search executor checks that need no Ray: settings, budgets, storage, retries, telling."""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import optuna
import pytest

from hamnet.compress.search.cluster import (
    RayHandle,
    RaySettings,
    _use_token_auth_if_available,
    connect_ray,
)
from hamnet.compress.search.driver import (
    SearchBudget,
    is_interrupted,
    requeue_interrupted,
    retry_of,
    run_search,
    tell,
)
from hamnet.compress.search.storage import open_study, study_storage
from hamnet.compress.search.worker import ERROR_ATTR, TrialOutcome, TrialResult, values_of
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import HardwareProfile, RuntimeSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Tests ask trials by hand from studies whose storage beats, as run_search does.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def _url(tmp_path: Path, name: str = "study.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs n_trials or timeout_seconds"),
        ({"n_trials": 0}, "n_trials must be positive, but got 0"),
        ({"timeout_seconds": 0.0}, "timeout_seconds must be positive"),
        ({"n_trials": 3, "timeout_seconds": -1.0}, "timeout_seconds must be positive"),
    ],
)
def test_budget_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchBudget(**kwargs)  # type: ignore[arg-type]


def test_budget_accepts_either_limit() -> None:
    assert SearchBudget(n_trials=5).timeout_seconds is None
    assert SearchBudget(timeout_seconds=1.5).n_trials is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent": 0}, "max_concurrent must be at least 1"),
        ({"cpus_per_trial": -1.0}, "cpus_per_trial must be >= 0"),
        ({"gpus_per_trial": -0.5}, "gpus_per_trial must be >= 0"),
        ({"num_cpus": 0}, "num_cpus must be at least 1"),
        ({"num_cpus": 2, "address": "auto"}, "num_cpus sets the size of a local Ray"),
        ({"address": " "}, "address must be"),
    ],
)
def test_ray_settings_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RaySettings(**kwargs)  # type: ignore[arg-type]


def test_settings_for_profile() -> None:
    common = {
        "name": "t",
        "arch": "x86_64",
        "runtimes": [RuntimeSpec(name="torch")],
        "precisions": ["fp32"],
        "int8_reduce_range": True,
    }
    gpu = RaySettings.for_profile(HardwareProfile(device="cuda", threads=4, **common))
    assert (gpu.cpus_per_trial, gpu.gpus_per_trial) == (4.0, 1.0)
    cpu = RaySettings.for_profile(HardwareProfile(**common), max_concurrent=1)
    assert (cpu.cpus_per_trial, cpu.gpus_per_trial, cpu.max_concurrent) == (1.0, 0.0, 1)


def test_unreachable_address_fails_fast_naming_it() -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"cannot reach a Ray cluster at '{address}'"):
        connect_ray(RaySettings(address=address))
    assert time.monotonic() - start < 10


def test_joining_uses_token_auth_when_a_token_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token"))
    _use_token_auth_if_available()
    assert "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "token").write_text("abc")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    _use_token_auth_if_available()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _use_token_auth_if_available()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_malformed_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="'host:port'"):
        connect_ray(RaySettings(address="headnode"))


@pytest.mark.parametrize(
    "url",
    ["", "sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"],
)
def test_in_memory_storage_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="in-memory"):
        open_study(url, "s", ["minimize"], None, None)


def test_in_memory_study_is_refused_before_ray() -> None:
    study = optuna.create_study()
    handle = RayHandle(RaySettings(), "127.0.0.1:1", 1)
    with pytest.raises(ConfigError, match="RDB storage the Ray workers can open"):
        run_search(study, _quadratic, _suggest_x, SearchBudget(n_trials=1), handle)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nosuchdb://host/db", "nosuchdb://host/db"),
        ("not a url", "not a url"),
        ("sqlite:////proc/hamnet-no/x/study.db", "/proc/hamnet-no/x/study.db"),
        ("postgresql://hamnet:s3cret@127.0.0.1:1/db", "postgresql://hamnet:***@127.0.0.1:1/db"),
    ],
)
def test_storage_that_cannot_be_opened_names_the_url(url: str, shown: str) -> None:
    with pytest.raises(ConfigError, match="study storage") as info:
        open_study(url, "s", ["minimize"], None, None)
    assert shown in str(info.value)
    assert "s3cret" not in str(info.value)


def test_sqlite_path_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigError, match="cannot be opened"):
        open_study(_url(tmp_path, "dir.db"), "s", ["minimize"], None, None)


def test_relative_sqlite_path_is_made_absolute_and_study_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    study = open_study("sqlite:///runs/search.db", "s", ["minimize"], None, None)
    study.enqueue_trial({"x": 1.0})
    assert (tmp_path / "runs" / "search.db").is_file()
    again = open_study("sqlite:///runs/search.db", "s", ["minimize"], None, None)
    assert len(again.trials) == 1


@pytest.mark.parametrize(
    ("directions", "message"),
    [
        (["maximize"], r"created with directions \['minimize'\], but got \['maximize'\]"),
        (["minimize", "minimize"], "created with directions"),
        (["up"], "'minimize'/'maximize'"),
        ([], "non-empty"),
    ],
)
def test_directions_must_match(tmp_path: Path, directions: list[str], message: str) -> None:
    open_study(_url(tmp_path), "s", ["minimize"], None, None)
    with pytest.raises(ConfigError, match=message):
        open_study(_url(tmp_path), "s", directions, None, None)


def test_trials_of_a_killed_run_go_stale_and_optuna_queues_their_retry(tmp_path: Path) -> None:
    study = open_study(_url(tmp_path), "s", ["minimize"], None, None, heartbeat_interval=1)
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, 0.5)
    left = study.ask()
    x = left.suggest_float("x", 0, 1)
    never_beaten = study.ask()

    start = time.monotonic()
    assert requeue_interrupted(study, poll_seconds=0.1) == 2
    # Their last heartbeat was at ask(), before `start`: only an upper bound is meaningful.
    assert time.monotonic() - start < 10
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING", "WAITING"]
    assert [is_interrupted(t) for t in trials] == [False, True, True, False, False]
    by_origin = {retry_of(t): t for t in trials[3:]}
    assert by_origin[left.number].params == {"x": x}
    assert by_origin[never_beaten.number].params == {}
    retries = [study.ask(), study.ask()]
    assert x in [retry.suggest_float("x", 0, 1) for retry in retries]
    assert requeue_interrupted(study, poll_seconds=0.1) == 2  # both retries were left too


def test_a_study_not_opened_by_open_study_has_no_known_storage() -> None:
    with pytest.raises(ConfigError, match="opened with open_study"):
        study_storage(optuna.create_study())


def test_storage_records_heartbeats_and_retries(tmp_path: Path) -> None:
    study = open_study(_url(tmp_path), "s", ["minimize"], None, None)
    storage = study_storage(study)
    assert storage.get_heartbeat_interval() == 5
    assert storage.get_heartbeat_stale_trial_callback() is not None
    with pytest.raises(ConfigError, match="grace_period must be longer"):
        open_study(_url(tmp_path), "s", ["minimize"], None, None, grace_period=5)


def test_tell_maps_results_to_states(tmp_path: Path) -> None:
    study = open_study(_url(tmp_path), "s", ["minimize", "maximize"], None, None)
    told = [
        tell(study, study.ask(), TrialResult("complete", values=[1.0, 2.0])),
        tell(study, study.ask(), TrialResult("complete", values=[1.0])),
        tell(study, study.ask(), TrialResult("complete", values=[math.nan, 1.0])),
        tell(study, study.ask(), TrialResult("pruned", message="too slow")),
        tell(study, study.ask(), TrialResult("fail", message="Traceback...", error_type="E")),
        tell(study, study.ask(), TrialResult("complete", [0.0, 0.0], user_attrs={"o": object()})),
    ]
    assert [t.state.name for t in told] == [
        "COMPLETE",
        "FAIL",
        "FAIL",
        "PRUNED",
        "FAIL",
        "COMPLETE",
    ]
    assert "did not match the number of the objectives" in told[1].user_attrs[ERROR_ATTR]
    assert told[3].user_attrs["prune_reason"] == "too slow"
    assert told[4].user_attrs == {ERROR_ATTR: "Traceback...", "error_type": "E"}
    assert told[5].user_attrs["o"].startswith("<object object")


def test_objective_return_values_are_normalised() -> None:
    assert values_of(1) == ([1.0], {})
    assert values_of((1, 2.5)) == ([1.0, 2.5], {})
    assert values_of(TrialOutcome([3.0], {"a": 1})) == ([3.0], {"a": 1})
    with pytest.raises(TypeError, match="must return a float"):
        values_of("high")


def _quadratic(context: object, params: dict[str, float]) -> float:
    return (params["x"] - 1.0) ** 2


def _suggest_x(trial: optuna.Trial) -> dict[str, float]:
    return {"x": trial.suggest_float("x", -3, 3)}
