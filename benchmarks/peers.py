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

Dominance *by more than the measurement spread* (column ``clearly_dominated_by`` and a
line of the targets table, :func:`add_clear_dominance`): a hamnet front point clearly
dominates a peer point when it is at least as good on all three objectives (medians) and
either faster by more than the sum of both points' per-round p50 spreads, or at least
:data:`CLEAR_SIZE_FACTOR` times smaller (file sizes do not vary between rounds).
``--rescore DIR`` recomputes the comparison of an earlier run from its ``peers.csv``
(no model is re-run or re-timed) and rewrites its files with this column.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from hamnet.core.env import apply_defaults

if TYPE_CHECKING:
    import pandas as pd

SMOKE_RECIPES = ["fp32-torch", "fp32-onnxruntime", "ort-dynamic-int8", "torch-dynamic-int8"]

CLEAR_SIZE_FACTOR = 1.5
"""A front point this many times smaller than a peer point (and no worse elsewhere)
clearly dominates it: file sizes are exact, so the factor only rules out near-ties."""

CLEAR_COLUMN = "clearly_dominated_by"
"""Column of the hamnet front points that dominate a row by more than the spread."""

CLEAR_TARGET = "hamnet's front dominates every peer point by more than the measurement spread"


def clearly_dominating(
    table: pd.DataFrame, *, size_factor: float = CLEAR_SIZE_FACTOR
) -> dict[str, list[str]]:
    """For every measured peer/baseline row, the hamnet front rows that clearly dominate it.

    A front row ``f`` clearly dominates a row ``p`` when ``f`` is at least as good as
    ``p`` on accuracy, p50 latency and size, and either ``p``'s latency exceeds ``f``'s
    by more than ``f``'s plus ``p``'s per-round spread (``latency_p50_spread_ms``: their
    round ranges cannot overlap), or ``p`` is at least ``size_factor`` times larger.

    Args:
        table: The comparison table (columns of ``peer_recipes.COLUMNS``).
        size_factor: How many times smaller counts as clearly smaller.

    Returns:
        Row name -> names of the front rows that clearly dominate it (possibly empty).

    Raises:
        ConfigError: If ``size_factor`` is not above 1.
    """
    from hamnet.core.errors import ConfigError

    if not size_factor > 1.0:
        raise ConfigError(f"size_factor must be above 1, but got {size_factor}")
    measured = table[table["status"] == "measured"]
    front = measured[measured["on_hamnet_front"] == "yes"]
    out: dict[str, list[str]] = {}
    for _, p in measured[measured["side"] != "hamnet"].iterrows():
        out[str(p["name"])] = [
            str(f["name"]) for _, f in front.iterrows() if _clearly_better(f, p, size_factor)
        ]
    return out


def _clearly_better(f: Any, p: Any, size_factor: float) -> bool:
    if (
        f["accuracy"] < p["accuracy"]
        or f["latency_p50_ms"] > p["latency_p50_ms"]
        or f["size_mb"] > p["size_mb"]
    ):
        return False
    noise = float(f["latency_p50_spread_ms"]) + float(p["latency_p50_spread_ms"])
    faster = float(p["latency_p50_ms"]) - float(f["latency_p50_ms"]) > noise
    return faster or float(p["size_mb"]) >= size_factor * float(f["size_mb"])


def add_clear_dominance(comparison: Any, *, size_factor: float = CLEAR_SIZE_FACTOR) -> Any:
    """Add the ``clearly_dominated_by`` column and its line of the targets table.

    The column follows ``dominated_by``: the clearly dominating front points of a
    peer/baseline row (``-`` for none), ``(hamnet)`` on hamnet rows, empty on skipped
    rows. The target line follows the plain dominance line.

    Args:
        comparison: ``peer_recipes.Comparison`` (changed in place).
        size_factor: See :func:`clearly_dominating`.

    Returns:
        The same comparison.
    """
    table = comparison.table
    clear = clearly_dominating(table, size_factor=size_factor)
    values = [
        "(hamnet)" if side == "hamnet" and status == "measured"
        else ", ".join(clear[name]) or "-" if name in clear
        else None
        for name, side, status in zip(table["name"], table["side"], table["status"], strict=True)
    ]  # fmt: skip
    if CLEAR_COLUMN in table.columns:
        table = table.drop(columns=[CLEAR_COLUMN])
    table.insert(list(table.columns).index("dominated_by") + 1, CLEAR_COLUMN, values)
    comparison.table = table
    missed = [name for name, fronts in clear.items() if not fronts]
    line = {
        "target": CLEAR_TARGET,
        "measured": (
            f"all clearly dominated ({len(clear)} points)"
            if not missed
            else f"not clearly dominated: {', '.join(missed)}"
        ),
        "met": not missed,
    }
    targets = [t for t in comparison.targets if t["target"] != CLEAR_TARGET]
    after = next(
        (i + 1 for i, t in enumerate(targets) if t["target"].startswith("hamnet's front domin")),
        len(targets),
    )
    comparison.targets = [*targets[:after], line, *targets[after:]]
    return comparison


def points_from_table(table: pd.DataFrame, info: dict[str, Any]) -> list[Any]:
    """Rebuild measured points from a written ``peers.csv`` (for ``--rescore``).

    Each measured row gets its metrics back with per-round p50s whose median and
    max - min are the row's p50 and spread; its model is a placeholder that cannot be
    opened (nothing is re-timed). Skipped rows keep their reason.

    Args:
        table: ``peers.csv`` read with ``keep_default_na=False``.
        info: ``machine.json`` of the same run (batch sizes and threads).
    """
    from peer_recipes import BenchPoint, PeerModel

    from hamnet.core.candidate import Metrics
    from hamnet.core.errors import DataError

    def not_reopened(profile: Any) -> Any:
        raise DataError("a rescored point cannot be opened: its model was not kept, but got a call")

    points = []
    for _, row in table.iterrows():
        recipe = "" if row["recipe"] == "-" else str(row["recipe"])
        name, side, tool, wall_s = row["name"], row["side"], row["tool"], float(row["wall_s"])
        if row["status"] != "measured":
            skipped = str(row["status"]).removeprefix("skipped: ")
            points.append(
                BenchPoint(name, side, tool, None, wall_s, skipped=skipped, recipe=recipe)
            )
            continue
        latency, spread = float(row["latency_p50_ms"]), float(row["latency_p50_spread_ms"])
        model = PeerModel(str(row["runtime"]), str(row["precision"]), [], not_reopened)
        point = BenchPoint(
            name, side, tool, model, wall_s, recommended=row["recommended"] == "yes", recipe=recipe
        )
        point.metrics = Metrics(
            accuracy=float(row["accuracy"]), latency_p50_ms=latency,
            latency_p90_ms=float(row["latency_p90_ms"]),
            latency_batch_size=int(info.get("latency_batch_size", 1)),
            throughput_sps=float(row["throughput_sps"]),
            throughput_batch_size=int(info.get("throughput_batch_size", 1)),
            size_mb=float(row["size_mb"]), params=0, flops=0,
            peak_memory_mb=float(row["peak_memory_mb"]), runtime=str(row["runtime"]),
            threads=int(info.get("threads", 1)), eval_samples=0,
        )  # fmt: skip
        point.p50_rounds = [latency - spread / 2, latency, latency + spread / 2]
        points.append(point)
    return points


def rescore(out: str | Path, *, rounds: int) -> dict[str, Path]:
    """Recompute an earlier run's comparison from its ``peers.csv`` and rewrite its files.

    Args:
        out: The run's output folder (``peers.csv`` and ``machine.json``).
        rounds: How many interleaved rounds that run measured (for the header), when its
            ``machine.json`` does not say.

    Returns:
        The rewritten files by kind.
    """
    import json

    import pandas as pd
    from peer_recipes import compare, write_outputs

    from hamnet.core.errors import DataError

    folder = Path(out)
    if not (folder / "peers.csv").is_file():
        raise DataError(f"--rescore needs a folder with peers.csv, but got {folder}")
    info = json.loads((folder / "machine.json").read_text())
    table = pd.read_csv(folder / "peers.csv", keep_default_na=False)
    comparison = add_clear_dominance(compare(points_from_table(table, info)))
    info.setdefault("rounds", rounds)
    title = f"hamnet vs single-tool recipes ({info.get('baseline', folder.name)})"
    return write_outputs(comparison, folder, title=title, info=info, rounds=info["rounds"])


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
    parser.add_argument(
        "--rescore", default=None, metavar="DIR",
        help="recompute an earlier run's comparison from DIR/peers.csv (nothing re-timed)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be positive, but got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, but got {args.threads}")
    apply_defaults()
    if args.rescore is not None:
        files = rescore(args.rescore, rounds=args.repeats)
        print(files["markdown"].read_text())
        return
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
    comparison = add_clear_dominance(comparison)
    info = machine_info(profile)
    info["baseline"] = name
    info["rounds"] = args.repeats
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
