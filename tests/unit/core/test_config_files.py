"""Every YAML file in the repo validates; bad configs fail with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hamnet.core.config import config_from_dict, load_config
from hamnet.core.errors import ConfigError, HardwareProfileError
from hamnet.core.hardware import available_profiles, load_profile, load_profile_file

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_in_the_repo_validates(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize(
    "path", sorted((REPO / "hardware_profiles").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_hardware_profile_validates(path: Path) -> None:
    profile = load_profile_file(path)
    assert profile.name == path.stem


def test_prefect_yaml_has_the_nightly_deployment() -> None:
    data = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in data["deployments"]}
    assert set(deployments) == {"default", "remote"}
    for deployment in deployments.values():
        assert deployment["entrypoint"] == "flows/hamnet_optimize.py:hamnet_optimize"
    schedule = deployments["default"]["schedules"][0]
    assert schedule == {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    # the worker changes into the folder `prefect deploy` ran in: no environment variable
    (pull,) = data["pull"]
    step = pull["hamnet.ops.prefect_steps.set_project_directory"]
    assert step["directory"] == "{{ project-dir.stdout }}"
    remote = deployments["remote"]["pull"]
    assert "prefect.deployments.steps.git_clone" in remote[0]


def test_required_profiles_exist() -> None:
    assert {"x86-avx2", "x86-vnni-server", "arm64-edge", "nvidia-gpu"} <= set(available_profiles())


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"stages\.train\.epoch: unknown key"):
        config_from_dict({"stages": {"train": {"epoch": 3}}})


def test_wrong_type_and_range_say_what_was_got() -> None:
    with pytest.raises(ConfigError, match=r"stages\.train\.epochs.*but got 'many'"):
        config_from_dict({"stages": {"train": {"epochs": "many"}}})
    with pytest.raises(ConfigError, match=r"constraints\.max_accuracy_drop.*but got -0\.5"):
        config_from_dict({"constraints": {"max_accuracy_drop": -0.5}})


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ConfigError, match="hidden_size=30 and num_heads=4"):
        config_from_dict({"model": {"hamnet": {"hidden_size": 30, "num_heads": 4}}})


def test_missing_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(HardwareProfileError, match=r"unknown hardware profile 'tpu-v9'.*x86-avx2"):
        load_profile("tpu-v9")


def test_absent_hardware_is_refused() -> None:
    with pytest.raises(HardwareProfileError, match="does not match this machine"):
        load_profile("arm64-edge")


def _profile_with_runtime(tmp_path: Path, runtime: str) -> Path:
    data = yaml.safe_load((REPO / "hardware_profiles" / "x86-avx2.yaml").read_text())
    data["runtimes"] = [{"name": runtime}]
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_profile_runtime_names_come_from_the_registry(tmp_path: Path) -> None:
    from hamnet.core import registry

    assert {"torch", "onnxruntime", "openvino"} <= set(registry.names("runtime"))
    with pytest.raises(
        ConfigError,
        match=r"runtimes\.0\.name.*runtime must be one of .*onnxruntime.*did you mean "
        r"'onnxruntime'.*but got 'onnxruntim'",
    ):
        load_profile_file(_profile_with_runtime(tmp_path, "onnxruntim"))


def test_a_registered_runtime_is_accepted_in_a_profile(tmp_path: Path) -> None:
    from hamnet.core import registry

    registry.register("runtime", "my_npu", "my_pkg.npu:MyNpu")
    try:
        profile = load_profile_file(_profile_with_runtime(tmp_path, "my_npu"))
    finally:
        registry.unregister("runtime", "my_npu")
    assert profile.runtime_names == ["my_npu"]
