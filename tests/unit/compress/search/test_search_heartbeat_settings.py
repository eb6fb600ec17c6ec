"""The search stage's heartbeat settings: validated at load, passed to Optuna's storage,
and not part of what names the study (so changing them resumes the same study)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from hamnet.compress.search.storage import study_storage
from hamnet.core.config import load_config
from hamnet.core.errors import ConfigError
from hamnet.pipeline.plan import make_stage
from hamnet.pipeline.run import make_context


def _config(**nas: object):  # type: ignore[no-untyped-def]
    return load_config(REPO / "configs" / "search.yaml", overrides={"stages": {"nas": nas}})


def test_defaults_match_the_storage_defaults() -> None:
    nas = _config().stages.nas
    assert nas is not None
    assert (nas.heartbeat_seconds, nas.stale_after_seconds, nas.max_retries) == (5, None, 3)


def test_a_grace_period_not_longer_than_the_heartbeat_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"stale_after_seconds must be longer than "
                       r"heartbeat_seconds \(4\), but got 4"):  # fmt: skip
        _config(heartbeat_seconds=4, stale_after_seconds=4)


def test_heartbeat_settings_do_not_rename_the_study() -> None:
    stage = make_stage("nas")
    assert stage.study_name(_config()) == stage.study_name(
        _config(heartbeat_seconds=2, stale_after_seconds=7, max_retries=None)
    )


def test_the_stage_opens_its_study_with_them(tmp_path: Path) -> None:
    space = str(REPO / "search_spaces" / "hamnet_digits.yaml")
    config = _config(space=space, heartbeat_seconds=2, stale_after_seconds=7, max_retries=1)
    ctx = make_context(config, tmp_path)
    stage = make_stage("nas")
    study = stage._open_study(  # the study the stage's run() would search in
        f"sqlite:///{tmp_path / 'optuna.db'}", "s", stage._space(ctx), ctx
    )
    storage = study_storage(study)
    assert storage.get_heartbeat_interval() == 2
    assert storage.grace_period == 7
    assert storage.get_heartbeat_stale_trial_callback() is not None
