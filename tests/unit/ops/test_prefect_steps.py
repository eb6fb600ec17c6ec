"""The pull step of prefect.yaml: the project folder recorded at deploy time, checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hamnet.core.errors import ConfigError
from hamnet.ops.prefect_steps import (
    FLOW_ENTRYPOINT_FILE,
    PROJECT_DIR_ENV,
    resolve_project_directory,
    set_project_directory,
)

REPO = Path(__file__).resolve().parents[3]


def _project(root: Path) -> Path:
    (root / "flows").mkdir(parents=True)
    (root / FLOW_ENTRYPOINT_FILE).write_text("")
    return root


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROJECT_DIR_ENV, raising=False)


def test_the_recorded_folder_is_used_and_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    assert set_project_directory(str(project)) == {"directory": str(project)}
    assert Path(os.getcwd()) == project


def test_an_empty_folder_names_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be a folder holding .* but got an empty value"):
        resolve_project_directory("  ")


def test_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    gone = tmp_path / "moved-away"
    with pytest.raises(ConfigError, match=rf"but got '{gone}', where there is nothing"):
        resolve_project_directory(str(gone))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="where there is a file"):
        resolve_project_directory(str(tmp_path / "a-file"))


def test_a_folder_without_the_flow_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"must hold {FLOW_ENTRYPOINT_FILE}, but"):
        resolve_project_directory(str(tmp_path))


def test_the_worker_variable_overrides_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _project(tmp_path / "recorded")
    other = _project(tmp_path / "other")
    monkeypatch.setenv(PROJECT_DIR_ENV, str(other))
    assert resolve_project_directory(str(recorded)) == other
    assert resolve_project_directory(str(recorded), honor_override=False) == recorded
    monkeypatch.setenv(PROJECT_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=rf"\${PROJECT_DIR_ENV} on the worker"):
        resolve_project_directory(str(recorded))
    monkeypatch.chdir(tmp_path)
    # prefect.yaml passes YAML values; a templated one arrives as a string
    assert set_project_directory(str(recorded), honor_override="false") == {  # type: ignore[arg-type]
        "directory": str(recorded)
    }


def test_prefect_yaml_records_the_folder_at_deploy_and_clones_for_remote() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (build,) = spec["build"]
    shell = build["prefect.deployments.steps.run_shell_script"]
    assert shell["script"] == "pwd"
    (pull,) = spec["pull"]
    step = pull["hamnet.ops.prefect_steps.set_project_directory"]
    assert step["directory"] == "{{ " + shell["id"] + ".stdout }}"

    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["default"]["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    ]
    remote = deployments["remote"]
    assert remote["build"] is None
    clone = remote["pull"][0]["prefect.deployments.steps.git_clone"]
    assert clone["repository"] == "{{ prefect.variables.hamnet_repository }}"
    enter = remote["pull"][1]["hamnet.ops.prefect_steps.set_project_directory"]
    assert enter == {"directory": "{{ " + clone["id"] + ".directory }}", "honor_override": False}
    for deployment in deployments.values():
        assert deployment["entrypoint"] == f"{FLOW_ENTRYPOINT_FILE}:hamnet_optimize"
