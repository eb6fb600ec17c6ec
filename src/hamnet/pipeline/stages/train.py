"""The ``train`` stage: train the baseline HAMNet of ``model.hamnet`` on the data."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from hamnet.core.candidate import Candidate
from hamnet.core.config import TrainStageConfig
from hamnet.pipeline.stages.base import Stage, StageContext


class TrainStage(Stage[TrainStageConfig]):
    """Train the baseline HAMNet described by ``model.hamnet`` on the configured data."""

    name = "train"
    section = "train"
    Options: ClassVar[type[BaseModel]] = TrainStageConfig
    order = 0
    baseline_source = "train"

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        from hamnet.models import HAMNet, HAMNetConfig
        from hamnet.training.trainer import set_seed, train_model

        cfg = ctx.config
        dataset = ctx.dataset
        model_cfg = HAMNetConfig.from_section(
            cfg.model.hamnet, input_size=dataset.num_features, num_classes=dataset.num_classes
        )
        set_seed(cfg.seed)
        model = HAMNet(model_cfg)
        checkpoint = ctx.store.staging_dir() / "model.pt"
        result = train_model(
            model,
            dataset,
            self.options(cfg),
            seed=cfg.seed,
            device=ctx.device,
            checkpoint_path=checkpoint,
        )
        ref = ctx.store.put(checkpoint, "torch")
        return [
            Candidate.create(
                name="baseline",
                stage=self.name,
                method="hamnet",
                artifact=ref,
                runtime="torch",
                architecture=model_cfg.model_dump(mode="json"),
                params={
                    "best_epoch": result.best_epoch,
                    "epochs_run": result.epochs_run,
                    "best_val_accuracy": round(result.best_val_accuracy, 6),
                    "train_seconds": round(result.seconds, 2),
                },
            )
        ]


PLUGIN = TrainStage
