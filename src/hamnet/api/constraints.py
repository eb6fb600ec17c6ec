"""What the user asks for: a :class:`Goal` and the :class:`Constraints` the model must meet."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo

from hamnet.core.config import ConstraintsSection
from hamnet.core.errors import ConfigError, HamnetError
from hamnet.core.hardware import resolve_hardware


class UnsupportedCombinationError(HamnetError, NotImplementedError):
    """The requested goal, model kind or input shape is not supported (yet)."""


class Goal(StrEnum):
    """What :meth:`~hamnet.api.Optimizer.optimize` should do."""

    QUANTIZE = "quantize"
    PRUNE = "prune"
    DISTILL = "distill"
    AUTO = "auto"


OptimizationGoal = Goal
"""The seed API's name for :class:`Goal` (the same enum)."""


def parse_goal(goal: Goal | str) -> Goal:
    """Return ``goal`` as a :class:`Goal`.

    Raises:
        ConfigError: Not a goal's value.
    """
    try:
        return Goal(goal)
    except ValueError:
        raise ConfigError(
            f"goal must be one of {[g.value for g in Goal]}, but got {goal!r}"
        ) from None


class _ConstraintsSchema(ConstraintsSection):
    """The config's ``constraints`` section plus the API's target and batch settings."""

    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0)  # type: ignore[assignment]
    target_hardware: str = Field("x86-avx2", min_length=1)
    batch_size: int = Field(1, ge=1)
    calibration_samples: int = Field(300, ge=1)
    budget_minutes: float | None = Field(None, gt=0.0)


_REQUIREMENTS = {"target_hardware": "a hardware profile name"}


def _requirement(name: str, info: FieldInfo) -> str:
    """What a field must be, in words, read from its type and bounds."""
    if name in _REQUIREMENTS:
        return _REQUIREMENTS[name]
    bounds = {
        key: getattr(m, key) for m in info.metadata for key in ("ge", "gt", "le") if hasattr(m, key)
    }
    optional = " or None" if info.default is None else ""
    if "ge" in bounds and "le" in bounds:
        return f"in [{bounds['ge']:g}, {bounds['le']:g}]{optional}"
    noun = "integer" if info.annotation is int else "number"
    if bounds.get("gt") == 0 or bounds.get("ge") == 1:
        return f"a positive {noun}{optional}"
    return f"a valid {noun}{optional}"


@dataclass(frozen=True)
class Constraints:
    """What the recommended model must satisfy.

    The limits are validated by the pipeline config's ``constraints`` section
    (:class:`~hamnet.core.config.ConstraintsSection`), strictly: a bool or a string
    is not a number.

    Attributes:
        target_size_mb: Largest model file size (None: unconstrained).
        max_latency_ms: Largest p50 latency on the target (None: unconstrained).
        max_accuracy_drop: Largest absolute accuracy drop (0.01 = one point).
        target_hardware: A hardware profile name (see ``hamnet profiles``), or
            ``"cpu"`` / ``"gpu"`` for the most specific profile of that kind present on
            this machine (replaced by that profile's name).
        batch_size: Intended inference batch size (validated; not used yet: the
            latency batch size comes from the hardware profile).
        calibration_samples: Samples used to calibrate static quantization.
        budget_minutes: Time budget in minutes for AUTO's student search (None: no
            budget; AUTO then searches students only when the bounds need it).

    Raises:
        ConfigError: A value out of range or of the wrong type (a ``ValueError``).
        HardwareProfileError: ``target_hardware`` is "cpu" or "gpu" and no profile of
            that kind is present on this machine.
    """

    target_size_mb: float | None = None
    max_latency_ms: float | None = None
    max_accuracy_drop: float = 0.01
    target_hardware: str = "x86-avx2"
    batch_size: int = 1
    calibration_samples: int = 300
    budget_minutes: float | None = None

    def __post_init__(self) -> None:
        values = asdict(self)
        try:
            _ConstraintsSchema.model_validate(values, strict=True)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0])
            info = _ConstraintsSchema.model_fields[name]
            raise ConfigError(
                f"{name} must be {_requirement(name, info)}, but got {values[name]!r}"
            ) from None
        object.__setattr__(self, "target_hardware", resolve_hardware(self.target_hardware))

    def has_size_constraint(self) -> bool:
        """Whether a size limit is set."""
        return self.target_size_mb is not None

    def has_latency_constraint(self) -> bool:
        """Whether a latency limit is set."""
        return self.max_latency_ms is not None

    def section(self) -> dict[str, Any]:
        """The pipeline config's ``constraints`` section for these limits."""
        return {
            "max_accuracy_drop": self.max_accuracy_drop,
            "max_latency_ms": self.max_latency_ms,
            "target_size_mb": self.target_size_mb,
        }
