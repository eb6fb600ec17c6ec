"""The trial objective of the ``nas`` and ``hpo`` stages: train a HAMNet, measure it.

One :class:`HAMNetObjective` is shipped to every Ray worker (it is a small picklable
dataclass; the data set is loaded once per worker process). A trial builds the
architecture from its genes, checks the cheap proxies (parameters, FLOPs) against the
configured limits, trains with its hyperparameters while reporting validation accuracy
each epoch (so Hyperband / successive halving can stop it early), then exports the
model to ONNX and measures its batch-1 latency in ONNX Runtime on the hardware
profile (hardware-aware search) and its size. The trained checkpoint is written under
``out_dir`` (on a cluster: a folder every node can reach) and named in the trial's
user attributes, so the best trials become pipeline candidates without retraining.

Objectives are computed on the VALIDATION split: the test split stays untouched until
the pipeline measures the chosen candidates.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamnet.compress.search.worker import PrunedTrial, TrialContext, TrialOutcome
from hamnet.core.config import DataSection, HAMNetSection, TrainStageConfig

logger = logging.getLogger("hamnet.search")

OBJECTIVE_NAMES = ("accuracy", "latency_ms", "size_mb", "params", "flops")


@functools.cache
def _dataset(data_json: str, base_dir: str) -> Any:
    from hamnet.training.data import load_dataset

    return load_dataset(DataSection.model_validate_json(data_json), base_dir=base_dir)


@dataclass(frozen=True)
class HAMNetObjective:
    """Train and measure one HAMNet per trial.

    Attributes:
        data: The data section (each worker loads it once).
        base_dir: Folder relative data paths resolve against.
        base_architecture: Settings of the genes a trial does not sample.
        base_training: Settings of the hyperparameters a trial does not sample.
        objectives: What to return, in order (names from :data:`OBJECTIVE_NAMES`).
        profile: Hardware profile name for the latency measurement.
        out_dir: Where trial checkpoints are written.
        seed: Seeds model initialisation and training.
        max_params: Prune a trial whose model has more parameters (cheap proxy).
        max_flops: Prune a trial whose model needs more FLOPs per sample.
        latency_repeats: Timed ONNX Runtime calls per trial.
        latency_threads: Intra-op threads for the latency measurement (None: the
            profile's). Trials that share a machine should measure with the CPUs Ray
            gave them, or their thread pools fight and every latency is inflated.
    """

    data: DataSection
    base_dir: str
    base_architecture: HAMNetSection
    base_training: TrainStageConfig
    objectives: tuple[str, ...]
    profile: str
    out_dir: str
    seed: int = 0
    max_params: int | None = None
    max_flops: int | None = None
    latency_repeats: int = 50
    latency_threads: int | None = None

    def __call__(self, ctx: TrialContext, params: dict[str, Any]) -> TrialOutcome:
        """Run one trial (inside a Ray worker)."""
        import torch

        from hamnet.compress.search.space import to_architecture, to_train_config
        from hamnet.models import HAMNet, count_flops, count_parameters, save_checkpoint
        from hamnet.training.trainer import set_seed, train_model

        torch.set_num_threads(1)
        dataset = _dataset(self.data.model_dump_json(), self.base_dir)
        architecture = to_architecture(params, self.base_architecture)
        model_config = architecture.to_model_config(dataset.num_features, dataset.num_classes)
        train_cfg = to_train_config(params, self.base_training)
        set_seed(self.seed)
        model = HAMNet(model_config)
        n_params = count_parameters(model)
        flops = count_flops(model, model_config.input_size)
        if self.max_params is not None and n_params > self.max_params:
            raise PrunedTrial(f"{n_params} parameters exceed max_params={self.max_params}")
        if self.max_flops is not None and flops > self.max_flops:
            raise PrunedTrial(f"{flops} FLOPs per sample exceed max_flops={self.max_flops}")

        def report(record: dict[str, float]) -> None:
            epoch = int(record["epoch"])
            ctx.report(record["val_accuracy"], epoch)
            if ctx.should_prune():
                raise PrunedTrial(
                    f"pruned by the pruner at epoch {epoch} "
                    f"(val_accuracy {record['val_accuracy']:.4f})"
                )

        result = train_model(
            model, dataset, train_cfg, seed=self.seed, progress=False, on_epoch_end=report
        )
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = save_checkpoint(model, out / f"trial-{ctx.number}.pt")
        latency, size_mb = self._latency_and_size(model, dataset.x_val[:1])
        metrics = {
            "accuracy": result.best_val_accuracy,
            "latency_ms": latency,
            "size_mb": size_mb,
            "params": float(n_params),
            "flops": float(flops),
        }
        return TrialOutcome(
            values=[metrics[name] for name in self.objectives],
            user_attrs={
                "metrics": metrics,
                "checkpoint": str(checkpoint),
                "architecture": model_config.model_dump(mode="json"),
                "training": train_cfg.model_dump(mode="json"),
                "history": [
                    {k: round(v, 6) for k, v in record.items()} for record in result.history
                ],
            },
        )

    def _latency_and_size(self, model: Any, x_one: Any) -> tuple[float, float]:
        return trial_latency_and_size(
            model, x_one, profile=self.profile, threads=self.latency_threads,
            repeats=self.latency_repeats,
        )  # fmt: skip


def trial_latency_and_size(
    model: Any,
    x_one: Any,
    *,
    profile: str,
    threads: int | None,
    repeats: int,
    ort_fused_attention: bool = False,
) -> tuple[float, float]:
    """Batch-1 p50 latency (ms) of a trial's HAMNet exported to ONNX, in ONNX Runtime on
    the hardware profile ``profile``, and the ONNX file's size (MB).

    Args:
        model: The trained HAMNet.
        x_one: One input row ``[1, features]``.
        profile: The hardware profile's name.
        threads: Intra-op threads (None: the profile's). Trials sharing a machine
            measure with the CPUs Ray gave them.
        repeats: Timed calls.
        ort_fused_attention: Export attention as ONNX Runtime ``Attention`` nodes.
    """
    import numpy as np

    from hamnet.backends.export import onnx_session
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.hardware import load_profile
    from hamnet.evaluate.measure import latency_ms

    hardware = load_profile(profile)
    if threads is not None:
        hardware = hardware.model_copy(update={"threads": threads})
    with tempfile.TemporaryDirectory(prefix="hamnet-trial-") as tmp:
        session, ref = onnx_session(
            model, ArtifactStore(Path(tmp)), hardware, ort_fused_attention=ort_fused_attention
        )
        x = np.ascontiguousarray(x_one, dtype=np.float32)
        p50, _ = latency_ms(session, x, warmup=10, repeats=repeats)
        del session
        return p50, ref.size_mb
