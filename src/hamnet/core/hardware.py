"""Hardware profiles: flat facts about a deployment target.

A profile (``hardware_profiles/<name>.yaml``) names the runtimes in preference order,
the precisions the target supports, thread counts and batch sizes. Candidates are
measured on the profile's runtimes, and a profile whose hardware is not present on
this machine is refused: hamnet never measures on something else and calls it the
target.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hamnet.core.config import _format_validation_error, plugin_name
from hamnet.core.errors import ConfigError, HardwareProfileError

RuntimeName = Annotated[str, plugin_name("runtime")]
"""A runtime: a name of ``registry.names("runtime")`` (checked without importing it)."""
Precision = Literal["fp32", "fp16", "int8"]

PROFILES_ENV = "HAMNET_PROFILES_DIR"


class RuntimeSpec(BaseModel):
    """One runtime the target can run, with its provider or device settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: RuntimeName
    providers: list[str] = Field(
        default_factory=list, description="ONNX Runtime execution providers, in order."
    )
    device: str = Field("cpu", description="torch device or OpenVINO device name.")


class HardwareProfile(BaseModel):
    """Facts about a deployment target, loaded from ``hardware_profiles/*.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    device: Literal["cpu", "cuda"] = "cpu"
    arch: Literal["x86_64", "aarch64"]
    required_cpu_flags: list[str] = Field(default_factory=list)
    runtimes: list[RuntimeSpec] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)
    int8_reduce_range: bool = Field(
        description="Quantize weights to 7 bits so INT8 matmuls do not saturate on CPUs "
        "without VNNI (ONNX Runtime's reduce_range)."
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads; None = all cores.")
    latency_batch_size: int = Field(1, ge=1)
    throughput_batch_size: int = Field(32, ge=1)

    def runtime(self, name: str) -> RuntimeSpec | None:
        """Return the spec of runtime ``name`` if the profile lists it."""
        return next((r for r in self.runtimes if r.name == name), None)

    @property
    def runtime_names(self) -> list[str]:
        """Runtime names in preference order."""
        return [r.name for r in self.runtimes]

    def missing_hardware(self) -> list[str]:
        """Return why this machine is not the profile's hardware (empty when it is)."""
        problems: list[str] = []
        machine = _normalized_machine()
        if machine != self.arch:
            problems.append(f"architecture {self.arch} expected, but this machine is {machine}")
        flags = cpu_flags()
        missing = [f for f in self.required_cpu_flags if f not in flags]
        if missing:
            problems.append(f"CPU flags {missing} required, but this CPU does not report them")
        if self.device == "cuda" and not _cuda_available():
            problems.append("an NVIDIA GPU with CUDA expected, but torch sees no CUDA device")
        return problems

    def ensure_present(self) -> None:
        """Raise unless this machine has the profile's hardware.

        Raises:
            HardwareProfileError: With every mismatch spelled out.
        """
        problems = self.missing_hardware()
        if problems:
            raise HardwareProfileError(
                f"hardware profile {self.name!r} does not match this machine: "
                + "; ".join(problems)
                + ". Measure on the target itself, or pick a profile listed by "
                "`hamnet profiles` as present."
            )


def _normalized_machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags of this machine (from /proc/cpuinfo on Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def profiles_dir() -> Path:
    """Return the folder holding the hardware profile YAML files."""
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "hardware_profiles"


def available_profiles() -> list[str]:
    """Return the names of the profiles in :func:`profiles_dir`."""
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile_file(path: Path) -> HardwareProfile:
    """Validate one profile YAML file.

    Raises:
        ConfigError: If the file does not validate.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"hardware profile {str(path)!r} cannot be read: {err}") from None
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(path))) from None


def load_profile(name_or_path: str, *, require_present: bool = True) -> HardwareProfile:
    """Load a hardware profile by name (or by the path of a YAML file).

    Args:
        name_or_path: A name listed by :func:`available_profiles`, or a YAML path.
        require_present: Refuse a profile whose hardware this machine does not have.

    Returns:
        The validated profile.

    Raises:
        HardwareProfileError: If the profile is unknown, or its hardware is absent.
        ConfigError: If the profile file does not validate.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        path = candidate
    else:
        path = profiles_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise HardwareProfileError(
                f"unknown hardware profile {name_or_path!r}: expected one of "
                f"{available_profiles()} (from {profiles_dir()}) or a path to a YAML file"
            )
    profile = load_profile_file(path)
    if require_present:
        profile.ensure_present()
    return profile


def resolved_threads(profile: HardwareProfile) -> int:
    """Return the intra-op thread count measurement uses for ``profile``."""
    return profile.threads or os.cpu_count() or 1
