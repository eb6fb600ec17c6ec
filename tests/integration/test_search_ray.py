"""Optuna trials on a real local Ray: overlap, failures, pruning, resume, joining a cluster.

One local Ray serves the whole session (``ray_local``). Objectives live in this module,
which pytest imports under a name the Ray workers cannot import, so it is registered to
be pickled by value. Drivers that must join another Ray (a resumed search, a cluster)
run in subprocesses: a process can be connected to one Ray only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest

from hamnet.compress.search.executor import (
    ERROR_ATTR,
    PRUNE_REASON_ATTR,
    PrunedTrial,
    RayHandle,
    RaySettings,
    SearchBudget,
    TrialContext,
    TrialOutcome,
    connect_ray,
    is_interrupted,
    open_study,
    retry_of,
    run_search,
)
from hamnet.compress.search.space import InfeasibleParams
from hamnet.core.errors import ConfigError

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- objectives


def sleepy_quadratic(context: TrialContext, params: dict[str, Any], sleep: float = 0.3) -> float:
    time.sleep(sleep)
    return (params["x"] - 1.0) ** 2


def suggest_x(trial: optuna.Trial) -> dict[str, Any]:
    return {"x": trial.suggest_float("x", -3.0, 3.0)}


MODES = ["ok", "raise", "crash", "prune", "optuna-prune", "nan", "infeasible"]


def by_mode(context: TrialContext, params: dict[str, Any]) -> Any:
    mode = params["mode"]
    if mode == "raise":
        raise ValueError("x out of range")
    if mode == "crash":
        os._exit(3)
    if mode == "prune":
        raise PrunedTrial("too slow on the target")
    if mode == "optuna-prune":
        raise optuna.TrialPruned("pruned the Optuna way")
    if mode == "nan":
        return math.nan
    return TrialOutcome([1.0], {"accuracy": 0.9})


def suggest_mode(trial: optuna.Trial) -> dict[str, Any]:
    mode = trial.suggest_categorical("mode", MODES)
    if mode == "infeasible":
        raise InfeasibleParams("hidden_size 30 is not divisible by num_heads 4")
    return {"mode": mode}


def stepping(context: TrialContext, params: dict[str, Any]) -> float:
    for step in range(4):
        context.report(params["x"], step)
        if context.should_prune():
            raise PrunedTrial(f"worse than the median at step {step}")
    context.set_user_attr("steps", 4)
    return float(params["x"])


def two_objectives(context: TrialContext, params: dict[str, Any]) -> TrialOutcome:
    context.report(params["x"], 0)
    assert context.should_prune() is False
    return TrialOutcome([params["x"] ** 2, (params["x"] - 2) ** 2], {"params_seen": params})


def where_am_i(context: TrialContext, params: dict[str, Any]) -> float:
    import ray

    context.set_user_attr("gcs_address", ray.get_runtime_context().gcs_address)
    return float(params["x"])


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ray_handle(ray_local: RayHandle) -> RayHandle:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_local


def _study(tmp_path: Path, name: str = "s", directions: list[str] | None = None, **kw: Any) -> Any:
    return open_study(
        f"sqlite:///{tmp_path / 'study.db'}",
        name,
        directions or ["minimize"],
        kw.get("sampler", optuna.samplers.RandomSampler(seed=0)),
        kw.get("pruner"),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


_DRIVER_PRELUDE = """
import functools, json, sys
import optuna, ray
import test_search_ray as m
from hamnet.compress.search.executor import (
    RaySettings, SearchBudget, connect_ray, open_study, run_search,
)
optuna.logging.set_verbosity(optuna.logging.WARNING)
ray.cloudpickle.register_pickle_by_value(m)
"""


# --------------------------------------------------------------------------- tests


def test_trials_run_concurrently_and_callbacks_never_stop_the_study(
    tmp_path: Path, ray_handle: RayHandle
) -> None:
    study = _study(tmp_path)
    seen: list[int] = []

    def on_trial_end(trial: optuna.trial.FrozenTrial) -> None:
        seen.append(trial.number)
        if len(seen) == 1:
            raise RuntimeError("the tracking server is down")

    assert ray_handle.max_concurrent == 2
    report = run_search(
        study, sleepy_quadratic, suggest_x, SearchBudget(n_trials=6), ray_handle,
        on_trial_end=on_trial_end,
    )  # fmt: skip
    trials = study.get_trials()
    assert report.state_counts == {"COMPLETE": 6} and report.trials_run == 6
    assert report.stopped_by == "n_trials" and report.resumed == 0
    assert sorted(seen) == list(range(6))
    spans = [
        (t.user_attrs["worker_started_at"], t.user_attrs["worker_finished_at"]) for t in trials
    ]
    assert all(end - start >= 0.3 for start, end in spans)
    overlapping = sum(
        1 for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]
    )
    assert overlapping >= 2, spans
    assert report.best_trials[0].value == min(t.value for t in trials)

    again = run_search(study, sleepy_quadratic, suggest_x, SearchBudget(n_trials=6), ray_handle)
    assert (again.trials_run, again.resumed, again.n_finished) == (0, 6, 6)
    more = run_search(
        study, sleepy_quadratic, suggest_x, SearchBudget(n_trials=8), ray_handle, progress=False
    )
    assert (more.trials_run, more.n_finished) == (2, 8)


def test_failures_and_prunes_are_recorded_and_the_study_goes_on(
    tmp_path: Path, ray_handle: RayHandle
) -> None:
    study = _study(tmp_path)
    for mode in MODES:
        study.enqueue_trial({"mode": mode})
    report = run_search(
        study, by_mode, suggest_mode, SearchBudget(n_trials=len(MODES)), ray_handle, progress=False
    )
    by = {t.params["mode"]: t for t in study.get_trials()}
    assert report.trials_run == len(MODES)
    assert {m: t.state.name for m, t in by.items()} == {
        "ok": "COMPLETE",
        "raise": "FAIL",
        "crash": "FAIL",
        "prune": "PRUNED",
        "optuna-prune": "PRUNED",
        "nan": "FAIL",
        "infeasible": "PRUNED",
    }
    assert by["ok"].user_attrs["accuracy"] == 0.9
    error = by["raise"].user_attrs[ERROR_ATTR]
    assert error.startswith("Traceback") and "ValueError: x out of range" in error
    assert "by_mode" in error and by["raise"].user_attrs["error_type"] == "ValueError"
    assert by["crash"].user_attrs["error_type"] in ("WorkerCrashedError", "RayTaskError")
    assert by["nan"].user_attrs[ERROR_ATTR].startswith("invalid objective values")
    assert by["prune"].user_attrs[PRUNE_REASON_ATTR] == "too slow on the target"
    assert by["optuna-prune"].user_attrs[PRUNE_REASON_ATTR] == "pruned the Optuna way"
    assert "not divisible" in by["infeasible"].user_attrs[PRUNE_REASON_ATTR]
    assert "worker_started_at" not in by["infeasible"].user_attrs  # never dispatched


def test_pruner_in_the_worker_prunes_via_report(tmp_path: Path, ray_handle: RayHandle) -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    study = _study(tmp_path, pruner=pruner)
    for x in (0.1, 0.2, 2.9, 0.05):
        study.enqueue_trial({"x": x})
    one_at_a_time = dataclasses.replace(ray_handle, max_concurrent=1)
    run_search(study, stepping, suggest_x, SearchBudget(n_trials=4), one_at_a_time, progress=False)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[2].user_attrs[PRUNE_REASON_ATTR] == "worse than the median at step 0"
    assert trials[2].intermediate_values == {0: 2.9} and trials[2].value == 2.9
    assert trials[3].intermediate_values == {0: 0.05, 1: 0.05, 2: 0.05, 3: 0.05}
    assert trials[3].user_attrs["steps"] == 4


def test_multi_objective_search(tmp_path: Path, ray_handle: RayHandle) -> None:
    study = _study(tmp_path, directions=["minimize", "minimize"])
    report = run_search(
        study, two_objectives, suggest_x, SearchBudget(n_trials=4), ray_handle, progress=True
    )
    assert report.state_counts == {"COMPLETE": 4}
    assert 1 <= len(report.best_trials) <= 4
    trial = study.trials[0]
    assert trial.intermediate_values == {0: trial.params["x"]}
    assert trial.user_attrs["params_seen"] == {"x": trial.params["x"]}


def test_a_suggest_bug_stops_the_search_and_requeues_running_trials(
    tmp_path: Path, ray_handle: RayHandle
) -> None:
    def buggy_suggest(trial: optuna.Trial) -> dict[str, Any]:
        if trial.number == 2:
            raise KeyError("num_layers")
        return suggest_x(trial)

    study = _study(tmp_path)
    objective = functools.partial(sleepy_quadratic, sleep=0.5)
    with pytest.raises(KeyError, match="num_layers"):
        run_search(study, objective, buggy_suggest, SearchBudget(n_trials=4), ray_handle)
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 1 and states[2:] == ["FAIL", "WAITING"]
    running = next(t for t in trials[:2] if t.state.name == "FAIL")
    assert is_interrupted(running) and not is_interrupted(trials[2])
    assert "KeyError: 'num_layers'" in trials[2].user_attrs[ERROR_ATTR]
    assert retry_of(trials[3]) == running.number


def test_time_budget_stops_asking_and_waits_for_running_trials(
    tmp_path: Path, ray_handle: RayHandle
) -> None:
    study = _study(tmp_path)
    objective = functools.partial(sleepy_quadratic, sleep=0.4)
    report = run_search(
        study, objective, suggest_x, SearchBudget(timeout_seconds=1.0), ray_handle, progress=False
    )
    assert report.stopped_by == "timeout"
    assert report.trials_run >= 2 and report.state_counts == {"COMPLETE": report.trials_run}
    assert report.wall_seconds < 5


def test_resources_the_cluster_lacks_are_refused(ray_handle: RayHandle) -> None:
    import ray

    with pytest.raises(ConfigError, match="gpus_per_trial=1 needs a Ray node with that many GPUs"):
        connect_ray(RaySettings(gpus_per_trial=1))
    with pytest.raises(ConfigError, match="cpus_per_trial=4 needs"):
        connect_ray(RaySettings(cpus_per_trial=4))
    assert ray.is_initialized()  # a Ray the handle did not start is left alone
    assert connect_ray(RaySettings(cpus_per_trial=0.5)).max_concurrent == 4


def test_objective_the_workers_cannot_load_is_refused_before_any_trial(
    tmp_path: Path, ray_handle: RayHandle
) -> None:
    module = types.ModuleType("hamnet_phantom_objectives")
    exec("def objective(context, params):\n    return 0.0\n", module.__dict__)
    sys.modules[module.__name__] = module
    study = _study(tmp_path)
    try:
        with pytest.raises(ConfigError, match="cannot load the objective"):
            run_search(
                study, module.objective, suggest_x, SearchBudget(n_trials=2), ray_handle,
                progress=False,
            )  # fmt: skip
    finally:
        del sys.modules[module.__name__]
    assert study.trials == []


def test_killed_search_resumes_to_the_same_total(tmp_path: Path, ray_handle: RayHandle) -> None:
    import ray

    n_trials = 6
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(
        url, "resume", ["minimize"], optuna.samplers.RandomSampler(seed=1), None,
        heartbeat_interval=1,
    )  # fmt: skip
    code = _DRIVER_PRELUDE + textwrap.dedent(f"""
        handle = connect_ray(RaySettings(address={ray.get_runtime_context().gcs_address!r}))
        study = open_study({url!r}, "resume", ["minimize"], None, None, heartbeat_interval=1)
        objective = functools.partial(m.sleepy_quadratic, sleep=1.5)
        run_search(study, objective, m.suggest_x, SearchBudget(n_trials={n_trials}), handle,
                   progress=False)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            if states.count("COMPLETE") >= 2 and states.count("RUNNING") >= 1:
                break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the driver subprocess made no progress"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)

    report = run_search(
        study, functools.partial(sleepy_quadratic, sleep=0.2), suggest_x,
        SearchBudget(n_trials=n_trials), ray_handle, progress=False,
    )  # fmt: skip
    trials = study.get_trials()
    interrupted = [t for t in trials if is_interrupted(t)]
    counted = [t for t in trials if t.state.is_finished() and t not in interrupted]
    assert len(counted) == n_trials and report.n_finished == n_trials
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    assert report.requeued == len(interrupted) == report.n_interrupted
    assert report.resumed >= 2 and report.trials_run == n_trials - report.resumed
    retries = {retry_of(t): t for t in trials if retry_of(t) is not None}
    assert sorted(retries) == [t.number for t in interrupted]
    for t in interrupted:
        # A trial killed between ``ask`` and its first ``suggest`` has no parameters yet;
        # whatever it had sampled is fixed for its retry, the rest is sampled afresh.
        assert t.params.items() <= retries[t.number].params.items()
        assert retries[t.number].state.name == "COMPLETE"
    completed = [t.params["x"] for t in trials if t.state.name == "COMPLETE"]
    assert len(completed) == len(set(completed)) == n_trials
    assert {t.state.name for t in trials} <= {"COMPLETE", "FAIL"}


def _stop_ray_under(temp_dir: str) -> None:
    """Stop only the Ray processes of the cluster whose temp dir is ``temp_dir``."""
    roots = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(temp_dir in arg for arg in (p.info["cmdline"] or []))
    ]
    procs = set(roots)
    for p in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.update(p.children(recursive=True))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs), timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@pytest.fixture
def ray_cluster() -> Iterator[int]:
    """A one-CPU Ray head started with ``ray start`` on a free port; yields the port."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    command = [
        str(RAY_BIN), "start", "--head", f"--port={port}", "--num-cpus=1",
        "--include-dashboard=false", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={_free_port()}",
    ]  # fmt: skip
    try:
        try:
            started = subprocess.run(
                command, env=_subprocess_env(), capture_output=True, text=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            pytest.skip("`ray start --head` did not start within 60 s")
        if started.returncode != 0:
            pytest.skip(f"`ray start --head` failed: {(started.stdout + started.stderr)[-1500:]}")
        yield port
    finally:
        _stop_ray_under(temp_dir)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_joins_a_cluster_by_address(
    tmp_path: Path, ray_handle: RayHandle, ray_cluster: int
) -> None:
    import ray

    url = f"sqlite:///{tmp_path / 'study.db'}"
    code = _DRIVER_PRELUDE + textwrap.dedent(f"""
        handle = connect_ray(RaySettings(address="127.0.0.1:{ray_cluster}"))
        study = open_study({url!r}, "cluster", ["minimize"], None, None)
        report = run_search(study, m.where_am_i, m.suggest_x, SearchBudget(n_trials=2), handle,
                            progress=False)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print("RESULT", json.dumps({{
            "address": handle.address, "max_concurrent": handle.max_concurrent, "nodes": nodes,
            "owns": handle.owns_connection, "complete": report.state_counts.get("COMPLETE"),
            "trials": [t.user_attrs for t in study.trials],
        }}))
        handle.shutdown()
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_subprocess_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["address"].endswith(f":{ray_cluster}")
    assert result["max_concurrent"] == 1 and result["owns"] is True
    assert result["complete"] == 2
    session_node = ray.get_runtime_context().get_node_id()
    for attrs in result["trials"]:
        assert attrs["gcs_address"].endswith(f":{ray_cluster}")
        assert attrs["worker_node_id"] in result["nodes"]
        assert attrs["worker_node_id"] != session_node
