"""benchmarks/student_search.py's account of a student study (trial counts, repeats)."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

ARCH = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "ffn_ratio": 4.0, "token_size": 64}
CHOICES = {"hidden_size": [16, 32], "num_layers": [1], "num_heads": [2], "ffn_ratio": [4.0],
           "token_size": [16, 64]}  # fmt: skip


def _trial(
    state: optuna.trial.TrialState, value: float | None, attrs: dict[str, object], **arch: object
) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={**ARCH, **arch},
        distributions={
            k: optuna.distributions.CategoricalDistribution(v) for k, v in CHOICES.items()
        },
        value=value,
        state=state,
        user_attrs=attrs,
    )


def _metrics(accuracy: float, latency: float) -> dict[str, object]:
    return {
        "metrics": {
            "accuracy": accuracy, "accuracy_drop": 0.98 - accuracy, "latency_ms": latency,
            "size_mb": 0.018,
        }
    }  # fmt: skip


@pytest.fixture
def study_db(tmp_path: Path) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    optuna.create_study(study_name="other-search", storage=url).add_trial(
        _trial(optuna.trial.TrialState.COMPLETE, 1.0, {})
    )
    study = optuna.create_study(study_name="digits-nas-1-students-abc", storage=url)
    complete, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    study.add_trial(_trial(complete, 0.0064, _metrics(0.978, 0.0064)))
    study.add_trial(_trial(complete, 0.0063, _metrics(0.978, 0.0063)))  # the same student
    study.add_trial(_trial(complete, 0.0065, _metrics(0.985, 0.0065), hidden_size=32))
    reason = "measured latency 0.0101 ms is more than 5% above ...: not trained"
    study.add_trial(_trial(pruned, None, {"prune_reason": reason}, token_size=16))
    study.add_trial(_trial(pruned, None, {"prune_reason": "pruned by the pruner at epoch 10"}))
    return db


def test_trial_counts_separate_repeats_and_the_two_kinds_of_pruning(study_db: Path) -> None:
    from student_search import trial_counts

    assert trial_counts(study_db) == {
        "trials": 5, "complete": 3, "pruned_untrained": 1, "pruned_by_pruner": 1, "failed": 0,
        "distinct_trained": 2, "repeats": 1,
    }  # fmt: skip


def test_describe_trials_lists_each_trained_architecture_once(study_db: Path) -> None:
    from student_search import describe_trials

    text = describe_trials(study_db)
    assert "`digits-nas-1-students-abc`" in text and "other-search" not in text
    assert "3 complete (2 distinct architectures, 1 repeats" in text
    row = next(line for line in text.splitlines() if line.startswith("| hidden 16, 1 layer"))
    assert "| 2 | 0.9780 |" in row and "0.0063-0.0064" in row and "| 0, 1 |" in row
    assert "not trained" in text and "pruned by the pruner at epoch 10" in text
