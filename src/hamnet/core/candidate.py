"""Candidates: every model the pipeline produces, with its lineage and measurements."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hamnet.core.artifacts import ArtifactRef
from hamnet.core.config import plugin_name
from hamnet.core.hashing import hash_json

RuntimeName = Annotated[str, plugin_name("runtime")]
"""A runtime: a name of ``registry.names("runtime")``."""


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (bools excluded): a loggable metric value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Metrics(BaseModel):
    """What measurement found for one candidate (one code path for all candidates).

    Attributes:
        accuracy: The selection figure, measured on the validation split: top-1
            accuracy when labels are known, otherwise the fidelity named by
            ``accuracy_kind``. The Pareto front, the constraints and the recommended
            pick all read it.
        accuracy_kind: What ``accuracy`` is: ``"top1_accuracy"``,
            ``"top1_agreement"`` (with the original model's top-1 class),
            ``"mean_cosine_similarity"`` (to the original model's outputs) or ``"none"``.
        test_accuracy: The same metric on the test split, scored once after selection;
            set only on the recommended candidate and the baseline (None on every
            other candidate, and in metrics saved before this field existed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    accuracy: float
    accuracy_kind: str = "top1_accuracy"
    test_accuracy: float | None = None
    latency_p50_ms: float
    latency_p90_ms: float
    latency_batch_size: int
    throughput_sps: float
    throughput_batch_size: int
    size_mb: float
    params: int
    flops: int
    peak_memory_mb: float
    runtime: RuntimeName
    threads: int
    eval_samples: int

    def as_mlflow(self) -> dict[str, float]:
        """Numeric metrics as a flat dict for ``mlflow.log_metrics``."""
        return {k: float(v) for k, v in self.model_dump().items() if is_number(v)}


class TeacherRef(BaseModel):
    """A teacher a candidate was distilled from.

    Attributes:
        name: The teacher candidate's name (e.g. ``"baseline"``, or ``"teacher-<stem>"``
            for a teacher given as a file).
        candidate_id: The teacher candidate's id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    candidate_id: str


LEGACY_PARAM_KEYS: tuple[str, ...] = ("architecture", "plan_file", "teachers", "teacher_ids")
"""``params`` keys that held the lineage before it had typed fields.

Candidates saved before read their lineage from these keys (see
:meth:`Candidate.lineage_params` for the same view of a new candidate); new candidates
keep their lineage in the typed fields only.
"""


class Candidate(BaseModel):
    """One model produced by a stage.

    Attributes:
        id: Stable id derived from the lineage and the artifact hash.
        name: Human-readable name, e.g. ``"baseline"`` or ``"ort-static-int8"``.
        parent_id: The candidate this one was made from (None for the baseline).
        stage: The stage that made it.
        method: The method within the stage (e.g. ``"ort_static_int8"``).
        params: The parameters that made it, for replay.
        artifact: Where its model file is.
        runtime: The runtime it is measured and deployed in.
        precision: Numeric precision of its weights.
        metrics: Set once measured.
        parity_max_abs_diff: Largest output difference to its parent, where checked.
        rejected: Why it may never be recommended (e.g. slower than its parent).
        notes: Anything a user should know (honest caveats of the method).
        architecture: The HAMNet config (``HAMNetConfig.model_dump(mode="json")``) of a
            model built from a config: a trained baseline, a search trial, a student.
        plan_file: The pruning plan (kept head / channel indices) that rebuilds a
            pruned model from its parent with ``apply_plan``.
        teachers: The teachers a distilled candidate learned from, in order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    parent_id: str | None = None
    stage: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    artifact: ArtifactRef
    runtime: RuntimeName
    precision: Literal["fp32", "fp16", "int8", "mixed"] = "fp32"
    metrics: Metrics | None = None
    parity_max_abs_diff: float | None = None
    rejected: str | None = None
    notes: list[str] = Field(default_factory=list)
    architecture: dict[str, Any] | None = None
    plan_file: str | None = None
    teachers: list[TeacherRef] | None = None

    @model_validator(mode="before")
    @classmethod
    def _lineage_from_params(cls, data: Any) -> Any:
        """Move the lineage of a candidate saved before the typed fields out of
        :data:`LEGACY_PARAM_KEYS` of ``params`` into the typed fields."""
        if not isinstance(data, dict):
            return data
        params = data.get("params")
        if not isinstance(params, dict) or not set(params) & set(LEGACY_PARAM_KEYS):
            return data
        data = dict(data)
        for key in ("architecture", "plan_file"):
            if data.get(key) is None and params.get(key) is not None:
                data[key] = params[key]
        if data.get("teachers") is None and params.get("teachers"):
            ids = params.get("teacher_ids") or [""] * len(params["teachers"])
            data["teachers"] = [
                {"name": str(n), "candidate_id": str(i)}
                for n, i in zip(params["teachers"], ids, strict=True)
            ]
        data["params"] = {k: v for k, v in params.items() if k not in LEGACY_PARAM_KEYS}
        return data

    def lineage_params(self) -> dict[str, Any]:
        """The lineage as candidates saved before the typed fields held it in ``params``.

        Returns:
            The set ones of ``architecture``, ``plan_file``, ``teachers`` (names) and
            ``teacher_ids``: for logs and tables that show the lineage beside the params.
        """
        lineage = {
            "architecture": self.architecture,
            "plan_file": self.plan_file,
            "teachers": self.teacher_names or None,
            "teacher_ids": self.teacher_ids or None,
        }
        return {k: v for k, v in lineage.items() if v is not None}

    @property
    def teacher_names(self) -> list[str]:
        """Names of the teachers (empty when not distilled)."""
        return [t.name for t in self.teachers or []]

    @property
    def teacher_ids(self) -> list[str]:
        """Candidate ids of the teachers (empty when not distilled)."""
        return [t.candidate_id for t in self.teachers or []]

    @staticmethod
    def make_id(parent_id: str | None, stage: str, method: str, artifact_sha: str) -> str:
        """Return a deterministic id for a candidate (same lineage + content = same id)."""
        return hash_json([parent_id, stage, method, artifact_sha], length=12)

    @classmethod
    def create(
        cls,
        *,
        name: str,
        stage: str,
        method: str,
        artifact: ArtifactRef,
        runtime: RuntimeName,
        parent: Candidate | None = None,
        **kwargs: Any,
    ) -> Candidate:
        """Build a candidate whose id follows from its lineage and artifact."""
        parent_id = parent.id if parent else None
        return cls(
            id=cls.make_id(parent_id, stage, method, artifact.sha256),
            name=name,
            parent_id=parent_id,
            stage=stage,
            method=method,
            artifact=artifact,
            runtime=runtime,
            **kwargs,
        )
