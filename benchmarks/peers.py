"""hamnet against the single-tool recipes a user would try instead, side by side.

Usage::

    .venv/bin/python benchmarks/peers.py [--baseline digits|large|conv] [--repeats 5]
        [--out benchmarks/results/peers] [--profile auto] [--smoke] [--no-mlflow]

In one run, on one machine, with one data split and one measurement code path
(``hamnet.evaluate.measure.measure_session``, timed in ``--repeats`` interleaved rounds), it
trains the FP32 baseline once and produces a point for:

- the FP32 baseline in PyTorch eager, ONNX Runtime and OpenVINO;
- ONNX Runtime dynamic INT8 (defaults), ONNX Runtime static INT8 (per-channel,
  reduce_range), OpenVINO FP16, NNCF post-training quantization (defaults), NNCF
  quantization with accuracy control (1 point), PyTorch dynamic quantization;
- with the ``bench`` extra installed: Olive's auto-tuned ``OnnxQuantization`` and Intel
  Neural Compressor's ``autotune`` (skipped with a message naming the extra otherwise);
- hamnet: the ``hamnet-optimize`` pipeline run in process with
  ``hamnet.pipeline.run.run_pipeline`` (same plan and stages as the Prefect flow
  ``flows/hamnet_optimize.py``) on ``configs/peers.yaml``: a student search (no
  hand-picked students: ``stages.nas.mode: students`` within the config's time budget)
  plus export and quantization; the conv net enters it as its ONNX export, which is not
  pruned (structured pruning is for HAMNets) but teaches the HAMNet students through its
  logits.

Baselines: ``digits`` (the default digits HAMNet of configs/default.yaml), ``large``
(seed 002's hidden 256, 4 layers, 8 heads on digits upsampled to 512 features),
``conv`` (three Conv2d layers on the digits seen as ``[N, 1, 8, 8]``; the reshape is
inside the model, so every tool gets the same ``[N, 64]`` input). ``--smoke`` runs a
tiny HAMNet, two peers and a quantize-only pipeline in well under a minute.

Writes ``peers.csv``, ``peers.md``, ``peers.png`` and ``machine.json`` to ``--out`` and
logs them to MLflow (experiment ``hamnet-benchmarks``). How to read them:
docs/benchmark_peers.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hamnet.core.env import apply_defaults

SMOKE_RECIPES = ["fp32-torch", "fp32-onnxruntime", "ort-dynamic-int8", "torch-dynamic-int8"]


def _large_data(work: Path, seed: int) -> Any:
    """Digits upsampled to 16x32 = 512 features with pixel noise (seed 002's input size)."""
    from sklearn.datasets import load_digits

    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.stack([np.kron(img, np.ones((2, 4))) for img in digits.images])
    x = images.reshape(len(images), -1) + rng.normal(0.0, 1.0, size=(len(images), 512))
    path = work / "large.npz"
    np.savez(path, x=x.astype(np.float32), y=digits.target)
    section = DataSection(source="file", path=str(path), seed=seed)
    return load_dataset(section), section


def _conv_net() -> Any:
    import torch
    from torch import nn

    class DigitsConvNet(nn.Module):
        """Three 3x3 convolutions on the 8x8 digit, global average pooling, a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            )  # fmt: skip
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features(x.reshape(-1, 1, 8, 8))
            return self.head(h.mean(dim=(2, 3)))

    return DigitsConvNet()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", choices=["digits", "large", "conv"], default="digits")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--out", default="benchmarks/results/peers")
    parser.add_argument("--config", default="configs/peers.yaml", help="hamnet's pipeline")
    parser.add_argument("--profile", default="auto", help="hardware profile (auto: detect)")
    parser.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="intra-op threads for every point, hamnet's included (default: the profile's)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny model, two peers")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--mlflow", default="sqlite:///mlflow.db", help="tracking URI")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be positive, but got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, but got {args.threads}")
    apply_defaults()
    started = time.perf_counter()

    import torch
    from machine import machine_info
    from peer_recipes import (
        Baseline,
        get_recipes,
        log_to_mlflow,
        run_benchmark,
        run_hamnet_pipeline,
        select_profile,
        write_outputs,
    )

    from hamnet.backends.export import export_module
    from hamnet.core.config import MeasureSection, deep_merge, load_config
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import set_seed, train_model

    profile = select_profile(args.profile)
    work = Path(args.work or tempfile.mkdtemp(prefix="hamnet-peers-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    profile_ref = profile.name
    if args.threads is not None:  # the same thread count for every point, hamnet's too
        profile = profile.model_copy(update={"threads": args.threads})
        profile_file = work / f"{profile.name}-{args.threads}t.yaml"
        profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False))
        profile_ref = str(profile_file)
    torch.set_num_threads(profile.threads or torch.get_num_threads())
    name = "smoke" if args.smoke else args.baseline
    overrides: dict[str, Any] = {"hardware_profile": profile_ref, "workdir": str(work / "hamnet")}
    if args.smoke:
        overrides["model"] = {"hamnet": {"hidden_size": 16, "num_layers": 1, "num_heads": 2}}
        overrides["stages"] = {
            "train": {"epochs": 3, "patience": 3},
            "nas": None,
            "prune": None,
            "distill": None,
            "export": {"formats": ["onnx"]},
            "quantize": {"methods": ["ort_dynamic_int8"], "calibration_samples": 64},
        }
        overrides["measure"] = {"warmup": 2, "repeats": 10}
    config = load_config(args.config, overrides)
    settings = MeasureSection(warmup=5, repeats=20) if args.smoke else config.measure

    set_seed(config.seed)
    if args.baseline == "large" and not args.smoke:
        data, section = _large_data(work, config.seed)
        hamnet_section = config.model.hamnet.model_copy(
            update={"hidden_size": 256, "num_layers": 4, "num_heads": 8, "token_size": 32}
        )
    else:
        section = config.data
        data = load_dataset(section)
        hamnet_section = config.model.hamnet
    train_cfg = config.stages.train
    assert train_cfg is not None, "configs/peers.yaml must have stages.train"
    print(f"[peers] training the {name} baseline on profile {profile.name} ({work})")
    model: Any
    checkpoint = None
    if args.baseline == "conv" and not args.smoke:
        model = _conv_net()
        train_model(model, data, train_cfg, seed=config.seed, progress=False)
    else:
        model = HAMNet(
            HAMNetConfig.from_section(hamnet_section, data.num_features, data.num_classes)
        )
        train_model(model, data, train_cfg, seed=config.seed, progress=False)
        checkpoint = save_checkpoint(model, work / "baseline" / "model.pt")
    model.eval()
    baseline = Baseline(name, model, data.num_features, work / "baseline", checkpoint)

    def hamnet_side() -> list[Any]:
        source, extra = checkpoint, {}
        if source is None:
            # Not a HAMNet: its ONNX export is the pipeline's baseline and the teacher of
            # the students (through its logits); structured pruning is for HAMNets only.
            example = torch.zeros(2, data.num_features)
            source = export_module(model, example, work / "baseline" / f"{name}.onnx")
            extra = {"stages": {"prune": None}}
        pipeline_overrides = {
            **overrides,
            "model": {"source": "file", "path": str(source)},
            "data": section.model_dump(mode="json"),
        }
        pipeline_config = load_config(args.config, deep_merge(pipeline_overrides, extra))
        return run_hamnet_pipeline(pipeline_config, base_dir=work, run_name=f"peers-{name}")

    recipes = get_recipes(SMOKE_RECIPES if args.smoke else None)
    _points, comparison = run_benchmark(
        baseline, data, recipes, hamnet_side, profile, settings, rounds=args.repeats,
        log=lambda line: print(f"[peers] {line}", flush=True),
    )  # fmt: skip
    info = machine_info(profile)
    info["baseline"] = name
    info["wall_s"] = round(time.perf_counter() - started, 1)
    files = write_outputs(
        comparison, args.out, title=f"hamnet vs single-tool recipes ({name})", info=info,
        rounds=args.repeats,
    )  # fmt: skip
    if not args.no_mlflow:
        run_id = log_to_mlflow(
            comparison, files, tracking_uri=args.mlflow, run_name=f"peers-{name}", info=info
        )
        print(f"[peers] MLflow run {run_id}")
    print(files["markdown"].read_text())
    print(f"[peers] done in {time.perf_counter() - started:.0f} s; files in {args.out}")


if __name__ == "__main__":
    main()
