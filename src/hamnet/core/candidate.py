"""Candidates: every model the pipeline produces, with its lineage and measurements."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hamnet.core.artifacts import ArtifactRef
from hamnet.core.hashing import hash_json

RuntimeName = Literal["torch", "onnxruntime", "openvino"]


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (bools excluded): a loggable metric value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Metrics(BaseModel):
    """What measurement found for one candidate (one code path for all candidates).

    ``accuracy`` is top-1 accuracy on the test split when labels are known; otherwise
    it is the metric named by ``accuracy_kind`` (e.g. top-1 agreement with the baseline).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    accuracy: float
    accuracy_kind: str = "top1_accuracy"
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
