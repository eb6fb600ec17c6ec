"""A student search killed mid-run resumes from its SQLite study without losing trials.

The pipeline runs in a child process (its own local Ray); once two students are
complete the child's process group is killed with SIGKILL. The same config run again
in this process resumes the study: the finished trials keep their numbers, parameters
and values, the killed run's RUNNING trials are failed and retried by Optuna once their
heartbeat is stale, and the study ends with the configured number of finished trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import tiny_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
]

N_TRIALS = 6

RUN = """
import sys
from rich.console import Console
from hamnet.core.config import load_config
from hamnet.pipeline.run import run_pipeline
run_pipeline(load_config(sys.argv[1]), base_dir=sys.argv[2], console=Console(quiet=True))
"""


def _config() -> dict[str, Any]:
    nas = {
        "mode": "students", "strategy": "random", "pruner": "none", "n_trials": N_TRIALS,
        "top_k": 2, "heartbeat_seconds": 1, "stale_after_seconds": 3,
        "ray": {"max_concurrent": 1, "num_cpus": 1},
        "students": {
            "train": {"epochs": 8, "patience": 8, "augment": "mixup", "mixup_alpha": 1.0,
                      "warmup_epochs": 0},
            "report_every": 2,
            # 16 distinct students: a repeat is pruned in the driver without training, so
            # a space of few students would finish before it could be killed.
            "space": {"hidden_sizes": [8, 12, 16, 24], "num_layers": [1], "num_heads": [1],
                      "ffn_ratios": [1.0, 2.0], "token_sizes": [16, "all"]},
        },
    }  # fmt: skip
    return tiny_config(
        seed=7,
        stages={"train": {"epochs": 2}, "nas": nas, "export": None, "quantize": None},
        tracking={"enabled": False},
    )


def _trials(db: Path) -> list[Any]:
    if not db.exists():
        return []
    storage = f"sqlite:///{db}"
    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception:
        return []
    if not summaries:
        return []
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return study.get_trials(deepcopy=False)


def test_a_killed_student_search_resumes_without_losing_finished_trials(
    tmp_path: Path, ray_local: Any
) -> None:
    from rich.console import Console

    from hamnet.core.config import load_config
    from hamnet.pipeline.run import run_pipeline

    config_file = tmp_path / "students.yaml"
    config_file.write_text(yaml.safe_dump(_config()))
    db = tmp_path / ".hamnet" / "optuna.db"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", RUN, str(config_file), str(tmp_path)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and child.poll() is None:
            done = [t for t in _trials(db) if t.state == optuna.trial.TrialState.COMPLETE]
            if len(done) >= 2:
                break
            time.sleep(0.5)
        assert child.poll() is None, "the search ended before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    before = {
        t.number: (t.params, t.values)
        for t in _trials(db)
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert len(before) >= 2
    assert len([t for t in _trials(db) if t.state.is_finished()]) < N_TRIALS

    result = run_pipeline(load_config(config_file), base_dir=tmp_path, console=Console(quiet=True))
    trials = _trials(db)
    after = {t.number: (t.params, t.values) for t in trials if t.state.is_finished()}
    assert {n: after[n] for n in before} == before  # nothing lost or redone
    counted = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(counted) >= N_TRIALS - 1  # a killed trial is failed, then retried
    assert any(c.stage == "nas" for c in result.candidates)
