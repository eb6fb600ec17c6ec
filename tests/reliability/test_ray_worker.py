"""A Ray worker SIGKILLed from outside in the middle of a trial.

``tests/integration/test_search_ray.py`` covers a worker that exits by itself
(``os._exit``) and a killed search driver; here another process kills the worker
while its trial runs, as the OOM killer or an operator would.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from hamnet.compress.search.executor import (
    ERROR_ATTR,
    RayHandle,
    SearchBudget,
    TrialContext,
    open_study,
    run_search,
)

from .conftest import FaultTable

pytestmark = pytest.mark.integration

VICTIM = 9.5


def slow_victim(context: TrialContext, params: dict[str, Any], pid_file: str) -> float:
    if params["x"] == VICTIM:
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(120)
    time.sleep(0.3)
    return float(params["x"]) ** 2


def suggest_x(trial: optuna.Trial) -> dict[str, Any]:
    return {"x": trial.suggest_float("x", 0.0, 10.0)}


def test_a_worker_killed_mid_trial_fails_that_trial_and_the_study_goes_on(
    tmp_path: Path, ray_local: RayHandle, fault_table: FaultTable, request: pytest.FixtureRequest
) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(url, "kill", ["minimize"], optuna.samplers.RandomSampler(seed=0), None)
    others = [1.0, 2.0, 3.0, 4.0]
    for x in [VICTIM, *others]:
        study.enqueue_trial({"x": x})
    killed: dict[str, float] = {}

    pid_file = tmp_path / "victim.pid"

    def kill_the_victims_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if pid_file.is_file() and pid_file.read_text():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                killed["at"] = time.monotonic()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_victims_worker, daemon=True)
    killer.start()
    objective = functools.partial(slow_victim, pid_file=str(pid_file))
    report = run_search(
        study, objective, suggest_x, SearchBudget(n_trials=5), ray_local, progress=False
    )
    finished = time.monotonic()
    killer.join(timeout=5)
    assert "at" in killed, "the victim's worker was never seen running"

    by_x = {t.params["x"]: t for t in study.get_trials()}
    victim = by_x[VICTIM]
    assert victim.state.name == "FAIL"
    assert victim.user_attrs["error_type"] in ("WorkerCrashedError", "RayTaskError")
    assert victim.user_attrs[ERROR_ATTR]
    assert {x: by_x[x].state.name for x in others} == dict.fromkeys(others, "COMPLETE")
    assert [by_x[x].values for x in others] == [[x**2] for x in others]  # none lost
    assert report.trials_run == 5 and report.n_finished == 5
    fault_table.add(
        request,
        "Ray worker SIGKILLed in the middle of a trial",
        f"that trial FAIL ({victim.user_attrs['error_type']}, traceback kept); the other "
        "4 trials COMPLETE, study finished its budget",
        "nothing (4/4 completed trials kept)",
        finished - killed["at"],
    )
