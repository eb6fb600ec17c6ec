"""The general student-search path on the digits HAMNet: no hand-picked students.

Usage::

    .venv/bin/python benchmarks/student_search.py [--budget-minutes 5] [--seeds 0]
        [--out benchmarks/results/student_search] [--profile auto] [--threads N]
        [--config configs/peers.yaml]

For every seed it trains the digits FP32 baseline exactly as ``benchmarks/peers.py``
does (``model`` + ``stages.train`` of ``configs/peers.yaml``), then runs the pipeline of
``configs/peers.yaml`` on that checkpoint: a student search (``stages.nas.mode:
students``, the time budget from ``--budget-minutes``) whose best students are exported
and quantized beside the baseline, all on one Pareto front, selected on validation.
It reports, per seed and as mean ± t-interval over seeds:

- the recommended model's size and batch-1 p50 latency as ratios to the FP32 baseline
  (its ONNX file; its fastest FP32 runtime among those the pipeline measured),
- its test accuracy drop (the test split is scored once, after selection),
- the hypervolume of hamnet's (accuracy, latency, size) front, and the wall time.

``--threads N`` measures everything (the search's trials, the pipeline's candidates,
the FP32 reference) with N intra-op threads, as ``benchmarks/peers.py --threads`` does;
by default the profile's (all cores when it names none).

Writes ``student_search.csv`` and ``student_search.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from hamnet.core.env import apply_defaults


def _fp32_reference(result: Any, baseline_id: str) -> tuple[float, float]:
    """(latency ms, size MB) of the FP32 baseline: its fastest FP32 runtime, its ONNX file."""
    fp32 = [
        c
        for c in result.candidates
        if c.metrics is not None
        and (c.id == baseline_id or (c.parent_id == baseline_id and c.stage == "export"))
    ]
    latency = min(c.metrics.latency_p50_ms for c in fp32)
    onnx = [c.metrics.size_mb for c in fp32 if c.artifact.format == "onnx"]
    return latency, min(onnx) if onnx else min(c.metrics.size_mb for c in fp32)


def _test_accuracy(result: Any, candidate_id: str) -> float:
    for c in result.candidates:
        if c.id == candidate_id and c.metrics is not None and c.metrics.test_accuracy is not None:
            return float(c.metrics.test_accuracy)
    rec = result.selection.recommended
    if rec is not None and rec.id == candidate_id and rec.metrics.test_accuracy is not None:
        return float(rec.metrics.test_accuracy)
    raise RuntimeError(f"candidate {candidate_id} has no test score")


def _front_hypervolume(result: Any, ref_latency: float, ref_size: float) -> float:
    """Hypervolume of the measured candidates in (accuracy up, latency down, size down).

    Reference point: accuracy 0.5, twice the baseline's latency and size (units: the
    baseline's; so the figure compares across seeds and machines).
    """
    from hamnet.compress.search.strategies import hypervolume

    points = [
        (c.metrics.accuracy, c.metrics.latency_p50_ms / ref_latency, c.metrics.size_mb / ref_size)
        for c in result.candidates
        if c.metrics is not None and not c.rejected
    ]
    return hypervolume(points, ["maximize", "minimize", "minimize"], [0.5, 2.0, 2.0])


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """Train the baseline, run the student-search pipeline, and measure the outcome."""
    import torch
    from peer_recipes import select_profile
    from rich.console import Console

    from hamnet.core.config import load_config
    from hamnet.core.hardware import resolved_threads
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
    from hamnet.pipeline.run import run_pipeline
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import set_seed, train_model

    started = time.perf_counter()
    profile = select_profile(args.profile)
    profile_ref = profile.name
    if args.threads is not None:  # the same thread count for every measurement
        profile = profile.model_copy(update={"threads": args.threads})
        profile_file = work / f"{profile.name}-{args.threads}t.yaml"
        profile_file.parent.mkdir(parents=True, exist_ok=True)
        profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False))
        profile_ref = str(profile_file)
    torch.set_num_threads(profile.threads or torch.get_num_threads())
    base = load_config(args.config, {"seed": seed, "data": {"seed": seed}})
    data = load_dataset(base.data)
    set_seed(seed)
    section = base.model.hamnet
    model = HAMNet(HAMNetConfig.from_section(section, data.num_features, data.num_classes))
    assert base.stages.train is not None, f"{args.config} must have stages.train"
    train_model(model, data, base.stages.train, seed=seed, progress=False)
    checkpoint = save_checkpoint(model, work / f"seed-{seed}" / "baseline.pt")
    overrides = {
        "seed": seed,
        "data": {"seed": seed},
        "hardware_profile": profile_ref,
        "workdir": str(work / f"seed-{seed}" / "hamnet"),
        "model": {"source": "file", "path": str(checkpoint)},
        "stages": {"nas": {"timeout_seconds": args.budget_minutes * 60.0}},
    }
    config = load_config(args.config, overrides)
    print(f"[student-search] seed {seed}: baseline trained, searching {args.budget_minutes} min")
    search_started = time.perf_counter()
    result = run_pipeline(
        config, base_dir=work / f"seed-{seed}", run_name=f"ss-{seed}", console=Console(quiet=True)
    )
    seconds = time.perf_counter() - search_started
    rec = result.selection.recommended
    assert rec is not None and rec.metrics is not None
    baseline_id = result.selection.baseline_id
    ref_latency, ref_size = _fp32_reference(result, baseline_id)
    students = [c for c in result.candidates if c.stage == "nas"]
    search_notes = [n for s in result.stages if s.name == "nas" for n in s.notes]
    return {
        "seed": seed,
        "budget_min": args.budget_minutes,
        "threads": resolved_threads(profile),
        "recommended": rec.name,
        "architecture": _architecture_of(rec, result.candidates),
        "size_ratio": ref_size / rec.metrics.size_mb,
        "speedup": ref_latency / rec.metrics.latency_p50_ms,
        "fp32_latency_ms": ref_latency,
        "rec_latency_ms": rec.metrics.latency_p50_ms,
        "fp32_size_mb": ref_size,
        "rec_size_mb": rec.metrics.size_mb,
        "val_drop": _validation(result, baseline_id) - rec.metrics.accuracy,
        "test_drop": _test_accuracy(result, baseline_id) - _test_accuracy(result, rec.id),
        "students": len(students),
        "hypervolume": _front_hypervolume(result, ref_latency, ref_size),
        "pipeline_s": seconds,
        "wall_s": time.perf_counter() - started,
        "search": " | ".join(search_notes),
        "constraints_met": result.selection.constraints_satisfied,
    }


def _validation(result: Any, candidate_id: str) -> float:
    return float(next(c.metrics.accuracy for c in result.candidates if c.id == candidate_id))


def _architecture_of(candidate: Any, every: list[Any]) -> str:
    by_id = {c.id: c for c in every}
    current = candidate
    while current is not None:
        if current.architecture:
            a = current.architecture
            return (
                f"hidden {a['hidden_size']}, {a['num_layers']} layer(s), {a['num_heads']} "
                f"head(s), ffn {a['ffn_ratio']}, token {a['token_size']}"
            )
        current = by_id.get(current.parent_id or "")
    return "the baseline's"


def _summary(rows: list[dict[str, Any]]) -> dict[str, str]:
    from hamnet.evaluate.stats import mean_interval

    out = {}
    for key in ("size_ratio", "speedup", "test_drop", "val_drop", "hypervolume", "wall_s"):
        mean, low, high = mean_interval([float(r[key]) for r in rows])
        out[key] = f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", default="configs/peers.yaml")
    parser.add_argument("--profile", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="intra-op threads for every measurement (default: the profile's)",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/student_search")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    if not args.budget_minutes > 0:
        parser.error(f"--budget-minutes must be positive, but got {args.budget_minutes}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, but got {args.threads}")
    apply_defaults()
    work = Path(args.work or tempfile.mkdtemp(prefix="hamnet-ss-")).resolve()
    rows = [run_seed(args, seed, work) for seed in args.seeds]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "student_search.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Student search on the digits HAMNet ({args.budget_minutes:g} min budget, "
        f"{len(rows)} seed(s), {rows[0]['threads']} thread(s))",
        "",
        "| seed | recommended | student | size x | speed x | val drop | test drop | "
        "hypervolume | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['recommended']} | {r['architecture']} | {r['size_ratio']:.2f} | "
            f"{r['speedup']:.2f} | {100 * r['val_drop']:+.2f} | {100 * r['test_drop']:+.2f} | "
            f"{r['hypervolume']:.3f} | {r['wall_s']:.0f} |"
        )
    if len(rows) > 1:
        lines += ["", "Mean ± 95% t-interval over seeds:", ""]
        lines += [f"- {k}: {v}" for k, v in _summary(rows).items()]
    lines += ["", "Search: " + rows[0]["search"]]
    (out / "student_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
