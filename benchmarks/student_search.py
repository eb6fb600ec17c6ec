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

Writes ``student_search.csv``, ``student_search.md`` and, per seed, ``trials-seed-N.md``
(every trial of the student study: what was trained, what was pruned and why) to
``--out``. ``--trials DB`` prints that trial table for any run's ``optuna.db`` (e.g.
``benchmarks/peers.py --work DIR``'s ``DIR/hamnet/optuna.db``) and exits.
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


def _student_studies(storage: str | Path) -> list[Any]:
    """The student studies (``...-students-<teacher>``) in an Optuna SQLite file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{Path(storage).resolve()}"
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    return [optuna.load_study(study_name=n, storage=url) for n in names if "-students-" in n]


def _arch(params: dict[str, Any]) -> str:
    token = params.get("token_size")
    return (
        f"hidden {params.get('hidden_size')}, {params.get('num_layers')} layer(s), "
        f"{params.get('num_heads')} head(s), ffn {params.get('ffn_ratio')}, token {token}"
    )


def trial_counts(storage: str | Path) -> dict[str, int]:
    """Trials of the student studies in ``storage`` by outcome.

    Returns:
        ``trials``, ``complete``, ``pruned_untrained`` (by the latency bound, before any
        training), ``pruned_by_pruner`` (Hyperband, during training), ``failed``,
        ``distinct_trained`` (distinct architectures among the complete trials) and
        ``repeats`` (complete trials whose architecture an earlier complete trial had).
    """
    from hamnet.compress.search.worker import PRUNE_REASON_ATTR

    counts = dict.fromkeys(
        ("trials", "complete", "pruned_untrained", "pruned_by_pruner", "failed",
         "distinct_trained", "repeats"), 0,
    )  # fmt: skip
    for study in _student_studies(storage):
        seen: set[str] = set()
        for t in study.get_trials(deepcopy=False):
            counts["trials"] += 1
            state = t.state.name
            if state == "COMPLETE":
                counts["complete"] += 1
                key = _arch(t.params)
                counts["repeats" if key in seen else "distinct_trained"] += 1
                seen.add(key)
            elif state == "PRUNED":
                why = str(t.user_attrs.get(PRUNE_REASON_ATTR, ""))
                counts["pruned_untrained" if "not trained" in why else "pruned_by_pruner"] += 1
            elif state == "FAIL":
                counts["failed"] += 1
    return counts


def describe_trials(storage: str | Path) -> str:
    """A markdown account of the student studies in ``storage`` (an ``optuna.db``).

    Counts by outcome, then one row per trained architecture (how often it was
    trained, its validation accuracy and drop, measured latency, size, the trial
    numbers), then the architectures pruned before or during training with the first
    reason given.
    """
    from hamnet.compress.search.worker import PRUNE_REASON_ATTR

    lines: list[str] = []
    for study in _student_studies(storage):
        trials = study.get_trials(deepcopy=False)
        counts = trial_counts(storage)
        starts = [t.datetime_start for t in trials if t.datetime_start]
        ends = [t.datetime_complete for t in trials if t.datetime_complete]
        span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        lines += [
            f"# Student study `{study.study_name}`",
            "",
            f"{counts['trials']} trials in {span:.0f} s: {counts['complete']} complete "
            f"({counts['distinct_trained']} distinct architectures, {counts['repeats']} "
            f"repeats of an architecture already trained), {counts['pruned_untrained']} "
            f"pruned untrained by the latency bound, {counts['pruned_by_pruner']} stopped "
            f"by the pruner, {counts['failed']} failed.",
            "",
            "## Trained to the end",
            "",
            "| architecture | times | val accuracy | val drop (pt) | latency ms | size MB "
            "| trials |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        done: dict[str, list[Any]] = {}
        for t in trials:
            if t.state.name == "COMPLETE":
                done.setdefault(_arch(t.params), []).append(t)
        for arch, group in sorted(
            done.items(), key=lambda kv: kv[1][0].user_attrs["metrics"]["latency_ms"]
        ):
            m = group[0].user_attrs["metrics"]
            latencies = [g.user_attrs["metrics"]["latency_ms"] for g in group]
            lines.append(
                f"| {arch} | {len(group)} | {m['accuracy']:.4f} | "
                f"{100 * m['accuracy_drop']:+.2f} | {min(latencies):.4f}-{max(latencies):.4f} "
                f"| {m['size_mb']:.4f} | {', '.join(str(g.number) for g in group)} |"
            )
        lines += [
            "",
            "## Pruned",
            "",
            "| architecture | times | first reason |",
            "| --- | ---: | --- |",
        ]
        pruned: dict[str, list[Any]] = {}
        for t in trials:
            if t.state.name != "COMPLETE":
                pruned.setdefault(_arch(t.params), []).append(t)
        for arch, group in sorted(pruned.items(), key=lambda kv: -len(kv[1])):
            why = str(group[0].user_attrs.get(PRUNE_REASON_ATTR) or group[0].state.name)
            lines.append(f"| {arch} | {len(group)} | {why.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines) or f"no student study in {storage}\n"


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
        **trial_counts(Path(config.workdir) / "optuna.db"),
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
    parser.add_argument(
        "--trials", default=None, metavar="DB",
        help="print the student trials of an optuna.db and exit",
    )  # fmt: skip
    args = parser.parse_args()
    if args.trials is not None:
        print(describe_trials(args.trials))
        return
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
    for seed in args.seeds:
        storage = work / f"seed-{seed}" / "hamnet" / "optuna.db"
        (out / f"trials-seed-{seed}.md").write_text(describe_trials(storage))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
