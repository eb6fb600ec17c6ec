"""The nas stage in ``mode: students`` on a real local Ray with an SQLite study."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import tiny_config

from hamnet.core.candidate import Candidate
from hamnet.core.config import config_from_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def _config(n_trials: int, **students: Any) -> Any:
    nas = {
        "mode": "students",
        "strategy": "random",
        "pruner": "none",
        "n_trials": n_trials,
        "top_k": 2,
        "ray": {"max_concurrent": 2},
        "students": {
            "train": {"epochs": 2, "patience": 2, "augment": "mixup", "mixup_alpha": 1.0,
                      "warmup_epochs": 0},
            "report_every": 1,
            "space": {"hidden_sizes": [8, 16], "num_layers": [1], "num_heads": [1],
                      "ffn_ratios": [1.0], "token_sizes": [16, "all"]},
            **students,
        },
    }  # fmt: skip
    return config_from_dict(
        tiny_config(
            seed=3,
            stages={"train": {"epochs": 2}, "nas": nas, "export": None, "quantize": None},
            tracking={"enabled": False},
        )
    )


@pytest.fixture(scope="module")
def digits() -> Any:
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    data = load_dataset(DataSection(source="digits", seed=0))
    return dataclasses.replace(data, x_train=data.x_train[:300], y_train=data.y_train[:300])


@pytest.fixture(scope="module")
def teacher_file(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hamnet.core.config import HAMNetSection, TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
    from hamnet.training.trainer import set_seed, train_model

    set_seed(0)
    section = HAMNetSection(hidden_size=16, num_layers=1, num_heads=2, token_size=8)
    model = HAMNet(HAMNetConfig.from_section(section, 64, 10))
    train_model(model, digits, TrainStageConfig(epochs=3, warmup_epochs=0), progress=False)
    return save_checkpoint(model, tmp_path_factory.mktemp("teacher") / "teacher.pt")


def _run(config: Any, workdir: Path, data: Any, teacher_file: Path) -> tuple[list[Any], Any]:
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.hardware import load_profile
    from hamnet.pipeline.stages.base import StageContext
    from hamnet.pipeline.stages.nas import NASStage

    store = ArtifactStore(workdir / ".hamnet" / "artifacts")
    ctx = StageContext(config, load_profile(config.hardware_profile), store, workdir)
    ctx.dataset = data  # type: ignore[misc]  # the cached data set, given
    baseline = Candidate.create(
        name="baseline", stage="train", method="train",
        artifact=store.put(teacher_file, "torch"), runtime="torch",
    )  # fmt: skip
    return NASStage().run([baseline], ctx), ctx


def _finished(workdir: Path) -> list[Any]:
    storage = f"sqlite:///{workdir / '.hamnet' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return [t for t in study.get_trials() if t.state.is_finished()]


def test_student_search_resumes_from_its_rdb_without_losing_trials(
    tmp_path: Path, ray_local: Any, digits: Any, teacher_file: Path
) -> None:
    first, ctx = _run(_config(2), tmp_path, digits, teacher_file)
    before = {t.number: (t.params, t.values) for t in _finished(tmp_path)}
    assert len(before) == 2 and first
    assert all(c.stage == "nas" and c.architecture and c.parent_id for c in first)
    assert any("student search from teacher 'baseline'" in n for n in ctx.notes)
    # The same search with a larger budget continues the study: nothing lost or redone.
    _run(_config(4), tmp_path, digits, teacher_file)
    after = {t.number: (t.params, t.values) for t in _finished(tmp_path)}
    assert len(after) == 4
    assert {n: after[n] for n in before} == before


def test_the_choice_does_not_depend_on_the_test_labels(
    tmp_path: Path, ray_local: Any, digits: Any, teacher_file: Path
) -> None:
    # Accuracy alone (no timing noise) makes the choice deterministic.
    config = _config(3, selection="pareto")
    config = config.model_copy(
        update={
            "stages": config.stages.model_copy(
                update={"nas": config.stages.nas.model_copy(update={"objectives": ["accuracy"]})}
            )
        }
    )
    rng = np.random.default_rng(0)
    relabelled = dataclasses.replace(
        digits,
        y_test=rng.permutation(digits.y_test),
        x_test=rng.normal(size=digits.x_test.shape).astype(np.float32),
    )
    chosen = []
    for name, data in (("original", digits), ("relabelled", relabelled)):
        found, _ = _run(config, tmp_path / name, data, teacher_file)
        chosen.append(
            [(c.params["sampled"], c.params["search_metrics"]["accuracy"]) for c in found]
        )
    assert chosen[0] and chosen[0] == chosen[1]
