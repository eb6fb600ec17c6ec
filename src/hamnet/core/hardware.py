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
from collections.abc import Callable, Sequence
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


HARDWARE_KINDS: dict[str, str] = {"cpu": "cpu", "gpu": "cuda"}
"""The kinds of hardware a user may name instead of a profile, and the device each means."""


IMPLIED_CPU_FLAGS: dict[str, tuple[str, ...]] = {
    "avx512_vnni": ("avx512f",),
    "avx512f": ("avx2", "fma"),
    "avx2": ("avx",),
    "fma": ("avx",),
    "avx": ("sse4_2",),
}
"""CPU flags a flag implies (a CPU with AVX-512 has AVX2): how specific a profile is."""


def implied_cpu_flags(flags: Sequence[str]) -> frozenset[str]:
    """Return ``flags`` with every flag they imply (see :data:`IMPLIED_CPU_FLAGS`)."""
    found: set[str] = set()
    todo = list(flags)
    while todo:
        flag = todo.pop()
        if flag not in found:
            found.add(flag)
            todo.extend(IMPLIED_CPU_FLAGS.get(flag, ()))
    return frozenset(found)


def pick_profile(
    kind: str, profiles: Sequence[HardwareProfile], present: Callable[[HardwareProfile], bool]
) -> HardwareProfile:
    """Pick the most specific present profile of a kind of hardware.

    Among the profiles of the kind's device that ``present`` accepts, the one requiring
    the most CPU features wins, counting the features its flags imply
    (:func:`implied_cpu_flags`: x86-vnni-server over x86-avx2 on a CPU with VNNI); ties
    go to the first name in alphabetical order.

    Args:
        kind: ``"cpu"`` or ``"gpu"`` (a key of :data:`HARDWARE_KINDS`).
        profiles: The profiles to choose from.
        present: Whether this machine has a profile's hardware.

    Returns:
        The chosen profile.

    Raises:
        HardwareProfileError: If ``kind`` is unknown, or no profile of that kind is present.
    """
    if kind not in HARDWARE_KINDS:
        raise HardwareProfileError(
            f"hardware kind must be one of {sorted(HARDWARE_KINDS)}, but got {kind!r}"
        )
    of_kind = [p for p in profiles if p.device == HARDWARE_KINDS[kind]]
    usable = [p for p in of_kind if present(p)]
    if not usable:
        raise HardwareProfileError(
            f"no {kind!r} hardware profile matches this machine: looked for device "
            f"{HARDWARE_KINDS[kind]!r} in {[p.name for p in of_kind]} (all profiles: "
            f"{sorted(p.name for p in profiles)}), and none is present. Pass a profile name, "
            "or measure on the target itself."
        )
    return min(usable, key=lambda p: (-len(implied_cpu_flags(p.required_cpu_flags)), p.name))


def best_profile(kind: str) -> HardwareProfile:
    """Return the most specific profile of ``kind`` ("cpu" or "gpu") this machine has.

    Raises:
        HardwareProfileError: If ``kind`` is unknown or no such profile is present.
    """
    profiles = [load_profile(name, require_present=False) for name in available_profiles()]
    return pick_profile(kind, profiles, lambda p: not p.missing_hardware())


def resolve_hardware(hardware: str) -> str:
    """Return the profile name for ``hardware``: a kind ("cpu", "gpu") or a profile name.

    A kind resolves through :func:`best_profile`; anything else is returned unchanged.

    Raises:
        HardwareProfileError: If a kind is given and no profile of that kind is present.
    """
    if hardware in HARDWARE_KINDS:
        return best_profile(hardware).name
    return hardware
