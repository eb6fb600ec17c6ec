"""Search on Ray with Optuna: parallel efficiency, search quality, resume after a kill.

Usage::

    .venv/bin/python benchmarks/search.py [--parts parallel,quality,resume]
        [--trials 16] [--quality-trials 24] [--seeds 0,1,2]
        [--out benchmarks/results/search]

Three measurements, each with the pipeline's own objective (a digits HAMNet trained and
measured per trial, :class:`hamnet.compress.search.objective.HAMNetObjective`) and executor
(:func:`hamnet.compress.search.driver.run_search`), one local Ray with 2 CPUs:

* ``parallel``: the same 16-trial study (random sampler, fixed seed, so the same
  architectures) with 1 and with 2 trials in flight; wall-time ratio. Each trial
  trains as the shipped NAS example does (``configs/search.yaml``'s ``stages.train``:
  30 epochs), so the fixed per-worker start-up (imports, data) weighs on the ratio as
  much as it does in a real search, not more.
* ``quality``: random vs TPE vs NSGA-II after the same trial budget on the digits NAS
  space, several seeds; hypervolume of the accuracy/size front (size, not latency, so
  the comparison is not blurred by timing noise of trials sharing 2 cores), with one
  reference point for all runs (accuracy 0, the largest size seen).
* ``resume``: a search started in a subprocess is killed (SIGKILL) mid-study and
  restarted with the same storage; counts of trials finished, lost and repeated.

Writes ``search.md`` / ``search.json`` and ``hypervolume.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hamnet.core.env import apply_defaults

SPACE = "search_spaces/hamnet_digits.yaml"


EXAMPLE = "configs/search.yaml"


def _objective(out_dir: str, objectives: tuple[str, ...], training: Any = None) -> Any:
    """The pipeline's trial objective; ``training`` defaults to a short 8-epoch run."""
    from hamnet.compress.search.objective import HAMNetObjective
    from hamnet.core.config import DataSection, HAMNetSection, TrainStageConfig

    return HAMNetObjective(
        data=DataSection(),
        base_dir=str(Path.cwd()),
        base_architecture=HAMNetSection(token_size=8),
        base_training=training or TrainStageConfig(epochs=8, patience=8, warmup_epochs=0),
        objectives=objectives,
        profile="x86-avx2",
        out_dir=out_dir,
        latency_repeats=30,
        latency_threads=1,
    )


def _study(storage: str, name: str, strategy: str, objectives: tuple[str, ...], seed: int) -> Any:
    from hamnet.compress.search.storage import open_study
    from hamnet.compress.search.strategies import directions, make_pruner, make_sampler

    space = _space()
    multi = len(objectives) > 1
    study = open_study(
        storage,
        name,
        directions(objectives),
        make_sampler(strategy, space, seed=seed, multi_objective=multi),
        make_pruner("none", space, multi_objective=multi),
    )
    if study.trials:  # resumed: reseed as the nas/hpo stages do
        study.sampler = make_sampler(
            strategy, space, seed=seed + len(study.trials), multi_objective=multi
        )
    return study


def _space() -> Any:
    from hamnet.compress.search.space import load_search_space

    full = load_search_space(SPACE)
    return full.model_copy(update={"training": {}})


def _run(study: Any, objective: Any, n_trials: int, ray: Any, **kwargs: Any) -> Any:
    from hamnet.compress.search.driver import SearchBudget, run_search
    from hamnet.compress.search.space import suggest

    space = _space()
    return run_search(
        study, objective, lambda t: suggest(t, space), SearchBudget(n_trials=n_trials), ray,
        progress=False, **kwargs,
    )  # fmt: skip


def parallel(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from hamnet.compress.search.cluster import RaySettings, connect_ray
    from hamnet.core.config import load_config

    training = load_config(EXAMPLE).stages.train
    objective = _objective(str(tmp / "trials"), ("accuracy",), training)
    walls = {}
    for workers in (1, 2):
        with connect_ray(RaySettings(num_cpus=2, max_concurrent=workers)) as ray:
            storage = f"sqlite:///{tmp}/parallel-{workers}.db"
            study = _study(storage, "p", "random", ("accuracy",), 0)
            report = _run(study, objective, args.trials, ray)
            walls[workers] = report.wall_seconds
            print(f"[parallel] {workers} worker(s): {report.wall_seconds:.1f} s")
    return {
        "trials": args.trials,
        "trial_training": f"{EXAMPLE} stages.train (epochs={training.epochs})",
        "wall_seconds_1_worker": round(walls[1], 2),
        "wall_seconds_2_workers": round(walls[2], 2),
        "speedup": round(walls[1] / walls[2], 3),
    }


def quality(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from hamnet.compress.search.cluster import RaySettings, connect_ray
    from hamnet.compress.search.strategies import directions, hypervolume

    objectives = ("accuracy", "size_mb")
    objective = _objective(str(tmp / "trials-q"), objectives)
    fronts: dict[tuple[str, int], np.ndarray] = {}
    with connect_ray(RaySettings(num_cpus=2, max_concurrent=2)) as ray:
        for strategy in ("random", "tpe", "nsga2"):
            for seed in args.seeds:
                name = f"{strategy}-{seed}"
                study = _study(f"sqlite:///{tmp}/quality.db", name, strategy, objectives, seed)
                _run(study, objective, args.quality_trials, ray)
                done = [t.values for t in study.trials if t.state.name == "COMPLETE"]
                fronts[strategy, seed] = np.asarray(done, dtype=float)
                print(f"[quality] {name}: {len(done)} complete trials")
    largest = max(float(v[:, 1].max()) for v in fronts.values() if len(v))
    reference = [0.0, largest * 1.05]
    dirs = directions(objectives)
    volumes: dict[str, list[float]] = {}
    for (strategy, _seed), values in fronts.items():
        volumes.setdefault(strategy, []).append(hypervolume(values, dirs, reference))
    table = {
        s: {"mean": round(float(np.mean(v)), 5), "std": round(float(np.std(v)), 5), "runs": v}
        for s, v in volumes.items()
    }
    for strategy, row in table.items():
        print(f"[quality] {strategy}: hypervolume {row['mean']:.4f} ± {row['std']:.4f}")
    return {"objectives": list(objectives), "reference_point": reference,
            "trials": args.quality_trials, "hypervolume": table}  # fmt: skip


_CHILD = """
import sys
from hamnet.core.env import apply_defaults
apply_defaults()
sys.path.insert(0, {bench!r})
import search as bench
from hamnet.compress.search.cluster import RaySettings, connect_ray
objective = bench._objective({trials!r}, ("accuracy",))
with connect_ray(RaySettings(num_cpus=2, max_concurrent=2)) as ray:
    study = bench._study({storage!r}, "resume", "random", ("accuracy",), 0)
    bench._run(study, objective, {n}, ray)
"""


def resume(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import optuna

    from hamnet.compress.search.cluster import RaySettings, connect_ray
    from hamnet.compress.search.driver import is_interrupted

    storage = f"sqlite:///{tmp}/resume.db"
    n = args.trials
    code = _CHILD.format(
        bench=str(Path(__file__).parent), trials=str(tmp / "trials-r"), storage=storage, n=n
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    finished_at_kill = 0
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(1.0)
        try:
            study = optuna.load_study(study_name="resume", storage=storage)
        except Exception:  # not created yet
            continue
        finished_at_kill = sum(t.state.is_finished() for t in study.trials)
        running = sum(t.state.name == "RUNNING" for t in study.trials)
        if finished_at_kill >= n // 3 and running:
            break
    os.killpg(child.pid, signal.SIGKILL)  # the driver and its local Ray, mid-study
    child.wait()
    time.sleep(2.0)
    before = optuna.load_study(study_name="resume", storage=storage).trials
    running_at_kill = sum(t.state.name == "RUNNING" for t in before)
    with connect_ray(RaySettings(num_cpus=2, max_concurrent=2)) as ray:
        study = _study(storage, "resume", "random", ("accuracy",), 0)
        report = _run(study, _objective(str(tmp / "trials-r"), ("accuracy",)), n, ray)
    trials = study.trials
    counted = [t for t in trials if t.state.is_finished() and not is_interrupted(t)]
    complete_before = {t.number for t in before if t.state.name == "COMPLETE"}
    complete_after = {t.number for t in trials if t.state.name == "COMPLETE"}
    keys = [json.dumps(t.params, sort_keys=True) for t in counted]
    out = {
        "n_trials": n,
        "finished_when_killed": finished_at_kill,
        "running_when_killed": running_at_kill,
        "requeued_on_restart": report.requeued,
        "counted_finished_at_end": len(counted),
        "completed_trials_lost": len(complete_before - complete_after),
        "trials_repeated": len(keys) - len(set(keys)),
    }
    print(f"[resume] {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split = lambda cast: lambda text: [cast(t) for t in text.split(",") if t]  # noqa: E731
    parser.add_argument("--parts", type=split(str), default=["parallel", "quality", "resume"])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--quality-trials", type=int, default=24)
    parser.add_argument("--seeds", type=split(int), default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/search")
    parser.add_argument("--mlflow", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    apply_defaults()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hamnet-search-bench-"))
    parts = {"parallel": parallel, "quality": quality, "resume": resume}
    results = {name: parts[name](args, tmp) for name in args.parts}
    (out / "search.json").write_text(json.dumps(results, indent=2))
    lines = ["# Search benchmark (Optuna + Ray, 2 CPUs)", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", "```json", json.dumps(result, indent=2), "```", ""]
    (out / "search.md").write_text("\n".join(lines))
    if "quality" in results:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = results["quality"]["hypervolume"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(list(table), [v["mean"] for v in table.values()],
               yerr=[v["std"] for v in table.values()], capsize=4)  # fmt: skip
        ax.set_ylabel("hypervolume (accuracy x size)")
        ax.set_title(f"same budget: {args.quality_trials} trials, {len(args.seeds)} seeds")
        fig.tight_layout()
        fig.savefig(out / "hypervolume.png", dpi=120)
    print((out / "search.md").read_text())
    from hamnet.tracking.tracker import log_benchmark_files

    log_benchmark_files(args.mlflow, "search", sorted(out.iterdir()))


if __name__ == "__main__":
    main()
