"""Accuracy-aware INT8 against plain INT8 and the peers' accuracy-driven recipes.

The model: an MLP trained here on scikit-learn's digits (shipped offline) whose
hidden activations get an outlier channel by a function-preserving rescaling (one
unit's incoming weights x ``--outlier``, its outgoing weights / ``--outlier``): the FP32
model is unchanged, but the per-tensor activation scale of the next layer's input is
stretched, so plain static INT8 loses accuracy, the effect seen in transformers'
outlier features.

Compared in one run, each scored on the test split (the validation split is what the
accuracy-driven recipes may look at) and timed with hamnet's latency measurement at
batch 1, side by side:

* plain INT8: ONNX Runtime static (peer recipe ``ort-static-int8``), NNCF PTQ;
* NNCF accuracy control (``nncf.quantize_with_accuracy_control``, max 1 point);
* Intel Neural Compressor autotune (skipped with the reason when not installed);
* hamnet's ``int8_accuracy_aware`` (ONNX Runtime) and ``nncf_int8_accuracy_aware``
  (OpenVINO) with a 1-point budget: accuracy, latency, wall time, trials.

Trials: the models each tuner scored on the validation split. For NNCF accuracy
control and INC autotune, the calls of the validation function given to them
(wrapped to count: FP32 and INT8 models, NNCF's ranking of quantizer groups, each
subset or configuration tried); for hamnet, the assignments measured plus the
one-layer models of the attribution, and the wall time per phase.

Run: ``python benchmarks/quantization.py --max-trials 8`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_recipes import (
    Baseline,
    BenchPoint,
    IncAutoRecipe,
    NncfAccuracyControlRecipe,
    NncfPtqRecipe,
    OrtStaticInt8Recipe,
    artifact_model,
    calibration_rows,
    run_recipe,
    select_profile,
)

from hamnet.core.env import apply_defaults


def outlier_mlp(data: Any, outlier: float, hidden: int = 512, seed: int = 0) -> Any:
    """An MLP features-hidden-hidden-classes trained on ``data``, with two outlier channels."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(data.num_features, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, data.num_classes),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(np.asarray(data.x_train, np.float32))
    y = torch.from_numpy(np.asarray(data.y_train, np.int64))
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        # ReLU(a * z) = a * ReLU(z) for a > 0: the function is unchanged.
        for unit in (0, 1):
            model[0].weight[unit] *= outlier
            model[0].bias[unit] *= outlier
            model[2].weight[:, unit] /= outlier
    return model.eval()


def hamnet_point(
    method_name: str, baseline: Baseline, data: Any, profile: Any, work: Path, max_trials: int,
    max_drop: float,
) -> tuple[BenchPoint, str]:  # fmt: skip
    """Run one accuracy-aware method; the point of its best assignment and a summary."""
    from hamnet.compress.quantize.base import get_quantizer
    from hamnet.core.config import QuantizeStageConfig

    method = get_quantizer(method_name)
    cfg = QuantizeStageConfig(max_trials=max_trials, max_accuracy_drop=max_drop)
    started = time.perf_counter()
    calibration = calibration_rows(data)
    result = method.tune(  # type: ignore[attr-defined]
        baseline.onnx(), work / method_name, calibration=calibration, x_val=data.x_val,
        y_val=data.y_val, cfg=cfg, profile=profile,
    )  # fmt: skip
    best = result.best()
    main = method.materialize(  # type: ignore[attr-defined]
        result, best, baseline.onnx(), work / method_name, calibration, cfg, profile
    )
    wall = time.perf_counter() - started
    kept = ", ".join(best.fallback) or "none"
    model = artifact_model(main, method.output_format, method.runtime, best.precision,
                           f"FP32: {kept}")  # fmt: skip
    attributed = sum(1 for r in result.attribution if not math.isnan(r.error))
    scored = len(result.tried) + attributed
    trials = (f"{scored} scored ({len(result.tried)} assignments + {attributed} attribution"
              f" models; {result.skipped} settled unmeasured)")  # fmt: skip
    point = BenchPoint(f"hamnet:{method_name}", "hamnet", "hamnet", model, wall,
                       params=baseline.params, recipe=trials)  # fmt: skip
    return point, f"{result.summary()}; time: {result.timing_summary()}"


def measure(point: BenchPoint, data: Any, profile: Any, rounds: int) -> dict[str, Any]:
    """Accuracy on the validation and test splits, and p50 latency at batch 1."""
    from hamnet.evaluate.measure import latency_ms, predict

    row: dict[str, Any] = {"name": point.name, "wall_s": point.wall_s, "trials": point.recipe}
    if point.model is None:
        row["skipped"] = point.skipped
        return row
    session, _ = point.model.open(profile)
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        logits = predict(session, np.asarray(x, np.float32), 64)
        row[f"{split}_acc"] = float(np.mean(logits.argmax(1) == y))
    one = np.asarray(data.x_val[:1], np.float32)
    times = [latency_ms(session, one, warmup=20, repeats=200)[0] for _ in range(rounds)]
    row["p50_ms"] = float(np.median(times))
    row["precision"] = point.model.precision
    row["notes"] = point.model.notes
    return row


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outlier", type=float, default=1e4)
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="auto")
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the data split and the model's training."
    )
    args = parser.parse_args(argv)
    apply_defaults()
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    data = load_dataset(DataSection(seed=args.seed))
    profile = select_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = outlier_mlp(data, args.outlier, args.hidden, seed=args.seed)
        baseline = Baseline("digits-outlier", model, data.num_features, work / "baseline")
        points = [
            BenchPoint(
                "fp32 (onnxruntime)",
                "baseline",
                "onnxruntime",
                artifact_model(baseline.onnx(), "onnx", "onnxruntime", "fp32"),
                0.0,
            )
        ]
        for recipe in (OrtStaticInt8Recipe(), NncfPtqRecipe(), NncfAccuracyControlRecipe(),
                       IncAutoRecipe()):  # fmt: skip
            point = run_recipe(recipe, baseline, data, work / "peers")
            counted = getattr(recipe, "evaluations", None)
            point.recipe = f"{counted} scored (validation calls)" if counted else ""
            if getattr(recipe, "item_calls", 0):
                point.recipe += f" + {recipe.item_calls} one-item calls"  # type: ignore[attr-defined]
            points.append(point)
        summaries = []
        for name in ("int8_accuracy_aware", "nncf_int8_accuracy_aware"):
            point, summary = hamnet_point(name, baseline, data, profile, work / "hamnet",
                                          args.max_trials, args.max_drop)  # fmt: skip
            points.append(point)
            summaries.append(f"{name}: {summary}")
        rows = [measure(p, data, profile, args.rounds) for p in points]
    cpu = profile.name
    print(f"\nseed {args.seed}; profile {cpu}; digits val {len(data.x_val)} / test "
          f"{len(data.x_test)} rows; "
          f"outlier x{args.outlier:g}; budget {100 * args.max_drop:.1f} points\n")  # fmt: skip
    print("| recipe | precision | val acc | test acc | p50 ms | wall s | trials / notes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['name']} | - | - | - | - | - | skipped: {r['skipped'][:120]} |")
            continue
        print(f"| {r['name']} | {r['precision']} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | "
              f"{r['p50_ms']:.4f} | {r['wall_s']:.1f} | {r['trials']} {r['notes']} |")  # fmt: skip
    print()
    for s in summaries:
        print("-", s)


if __name__ == "__main__":
    main()
