"""The ``hamnet`` command line.

Every command turns a :class:`~hamnet.core.errors.HamnetError` into one clear line on
stderr and exit code 2, so scripts and schedulers see bad input as a failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hamnet.core.env import apply_defaults
from hamnet.core.errors import ConfigError, HamnetError

app = typer.Typer(
    name="hamnet",
    help="Turn a trained network into the best deployable model for a target and budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="Start/stop the served stack (Prefect server + worker, MLflow).")
app.add_typer(stack_app, name="stack")

console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_CONSTRAINTS_NOT_MET = 3


def _fail(err: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["stages.train.epochs=5", "seed=1"]`` into a nested dict (values as YAML).

    Raises:
        ConfigError: If an item is not ``dotted.key=value``.
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects dotted.key=value, but got {item!r}")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return result


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")] = Path(
        "configs/default.yaml"
    ),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: dotted.key=value (repeatable)."),
    ] = None,
    prefect: Annotated[
        bool,
        typer.Option(
            "--prefect/--no-prefect",
            help="Run as the Prefect flow hamnet-optimize (cached, retried) or in-process.",
        ),
    ] = True,
    base_dir: Annotated[
        Path, typer.Option(help="Project folder relative paths resolve against.")
    ] = Path("."),
) -> None:
    """Run the hamnet-optimize pipeline on CONFIG and print the candidates table.

    Exit codes: 0 done, 2 bad input (nothing started), 3 no candidate meets the
    constraints (all results are recorded; the nearest candidate is reported).
    """
    apply_defaults()
    try:
        overrides = parse_overrides(set_ or [])
        from hamnet.core.config import load_config
        from hamnet.pipeline.run import preflight

        cfg = load_config(config, overrides)
        preflight(cfg, base_dir)
        if prefect:
            from flows.hamnet_optimize import hamnet_optimize

            summary = hamnet_optimize(
                config_path=str(config.resolve()),
                overrides=overrides or None,
                base_dir=str(base_dir.resolve()),
            )
        else:
            from hamnet.pipeline.run import run_pipeline

            summary = run_pipeline(cfg, base_dir=base_dir, console=console).summary()
    except HamnetError as err:
        raise _fail(err) from None
    console.print_json(json.dumps(summary))
    if not summary.get("constraints_satisfied", True):
        err_console.print(
            f"[bold yellow]constraints not met:[/] {escape(str(summary['message']))} "
            "(every candidate is recorded; exit code 3)",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_CONSTRAINTS_NOT_MET)


@app.command()
def optimize(
    model: Annotated[
        str,
        typer.Argument(
            help="A hamnet .pt checkpoint, an .onnx model, a whole-module .pt file (with "
            "--trust-checkpoint), a Hugging Face model directory, or torchvision:NAME / "
            "timm:NAME (with --weights)."
        ),
    ],
    goal: Annotated[str, typer.Option(help="auto, quantize, prune or distill.")] = "auto",
    size: Annotated[float | None, typer.Option(help="Target size in MB.")] = None,
    latency: Annotated[float | None, typer.Option(help="Max p50 latency in ms.")] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="Max accuracy drop, a fraction (0.01 = 1 point).")
    ] = 0.01,
    hardware: Annotated[
        str,
        typer.Option(help="A hardware profile name, or cpu / gpu: the best present profile."),
    ] = "x86-avx2",
    data: Annotated[
        Path | None,
        typer.Option(
            help="Validation data: .npz with x (any rank) or x__<input name> arrays (several "
            "inputs), and optionally y labels (without: fidelity to the original model)."
        ),
    ] = None,
    train_data: Annotated[
        Path | None,
        typer.Option(
            help="Training data for pruning and distillation: .npz like --data; without "
            "y the original model labels it. Without it, only post-training methods run."
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="state_dict file for torchvision:NAME / timm:NAME.")
    ] = None,
    task: Annotated[
        str, typer.Option(help="Hugging Face directory: auto, embedding or classification.")
    ] = "auto",
    fidelity: Annotated[
        str,
        typer.Option(
            help="Without labels: agreement (top-1 class), cosine (embeddings) or auto (what "
            "the model declares, else a rule on its outputs)."
        ),
    ] = "auto",
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            help="Load .pt files with pickled code (a whole-module file): only files you "
            "made yourself."
        ),
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Where to write the recommended model.")
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="Preferred backend: onnx, openvino (repeatable).")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Work folder (default .hamnet-api/<time>).")
    ] = None,
    track: Annotated[bool, typer.Option(help="Log the run to MLflow.")] = False,
    prefect: Annotated[
        bool,
        typer.Option(
            "--prefect/--no-prefect",
            help="Run as the Prefect flow hamnet-optimize (ephemeral server unless "
            "PREFECT_API_URL is set) instead of in-process.",
        ),
    ] = False,
    budget_minutes: Annotated[
        float | None,
        typer.Option(
            help="Time budget (AUTO): a student search (HAMNet students distilled from "
            "the model) runs within it beside pruning and quantization."
        ),
    ] = None,
) -> None:
    """Optimize MODEL under constraints with the same pipeline (in-process, or --prefect).

    Writes the recommended model (--output), the config used and a JSON + Markdown
    report next to it. Exit codes: 0 constraints met, 2 bad input, 3 not met (the
    nearest candidate is still written and its violations reported).
    """
    apply_defaults()
    try:
        from hamnet.api.optimizer import Constraints, Optimizer

        if model.lower().endswith(".onnx"):
            optimizer = Optimizer.from_onnx(model, work_dir=work_dir)
        else:
            optimizer = Optimizer.from_pytorch(
                model, work_dir=work_dir, weights=weights, task=task,
                trust_checkpoint=trust_checkpoint,
            )  # fmt: skip
        validation = _load_npz(data) if data is not None else None
        training = _load_npz(train_data) if train_data is not None else None
        if training is not None and training[1] is None:
            training = training[0]
        constraints = Constraints(
            target_size_mb=size, max_latency_ms=latency, max_accuracy_drop=max_accuracy_drop,
            target_hardware=hardware,
        )  # fmt: skip
        with console.status(f"optimizing {Path(model).name} (goal {goal}) ..."):
            result = optimizer.optimize(
                goal, constraints, validation_data=validation, train_data=training,
                fidelity=fidelity,
                preferred_backends=backend, work_dir=work_dir, track=track, use_prefect=prefect,
                budget_minutes=budget_minutes,
            )  # fmt: skip
        written = []
        if output is not None:
            written.append(result.save_model(output))
            stem = output.with_suffix("")
            written.append(result.save_config(stem.with_name(stem.name + ".config.yaml")))
            written.extend(result.save_report(stem.with_name(stem.name + ".report")))
    except HamnetError as err:
        raise _fail(err) from None
    console.print(result.report.to_markdown(), soft_wrap=True)
    for path in written:
        console.print(f"wrote {path}")
    if not result.constraints_satisfied:
        raise typer.Exit(EXIT_CONSTRAINTS_NOT_MET)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Config or hardware profile YAML files.")],
) -> None:
    """Validate config and hardware profile files; exit 2 on the first invalid one."""
    from hamnet.core.config import load_config
    from hamnet.core.hardware import load_profile_file, profiles_dir

    try:
        for path in files:
            if path.resolve().parent == profiles_dir().resolve():
                load_profile_file(path)
            else:
                load_config(path)
            console.print(f"[green]ok[/] {path}")
    except HamnetError as err:
        raise _fail(err) from None


@app.command()
def profiles() -> None:
    """List hardware profiles and whether this machine has their hardware."""
    from hamnet.core.hardware import available_profiles, load_profile

    table = Table(title="hardware profiles")
    for col in ("name", "device", "runtimes", "precisions", "present here"):
        table.add_column(col)
    try:
        for name in available_profiles():
            profile = load_profile(name, require_present=False)
            missing = profile.missing_hardware()
            table.add_row(
                name,
                profile.device,
                ", ".join(profile.runtime_names),
                ", ".join(profile.precisions),
                "[green]yes[/]" if not missing else f"[red]no[/]: {'; '.join(missing)}",
            )
    except HamnetError as err:
        raise _fail(err) from None
    console.print(table)


def _load_npz(path: Path) -> tuple[Any, Any]:
    """Return ``x`` and (optional) ``y`` of an ``.npz`` file.

    ``x`` is the array ``x``, or a dict of the arrays ``x__<input name>`` (models with
    several inputs).
    """
    import numpy as np

    from hamnet.core.errors import DataError

    try:
        with np.load(path, allow_pickle=False) as data:
            named = {k[3:]: data[k] for k in data.files if k.startswith("x__")}
            if "x" not in data.files and not named:
                raise DataError(
                    f"data file {str(path)!r} must hold an array 'x' or arrays "
                    f"'x__<input name>' (and optionally 'y'), but holds {data.files}"
                )
            x = data["x"] if "x" in data.files else named
            return x, (data["y"] if "y" in data.files else None)
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"data file {str(path)!r} cannot be read as .npz: {err}") from None


@app.command()
def benchmark(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx, OpenVINO .xml or hamnet .pt.")],
    hardware: Annotated[
        str, typer.Option(help="Hardware profile name or YAML path (see `hamnet profiles`).")
    ] = "x86-avx2",
    runtime: Annotated[
        list[str] | None,
        typer.Option(help="Runtime to measure in (repeatable); default: all that fit."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help=".npz with x [N, ...] (or x__<input name> arrays for several inputs) and "
            "optionally y [N] labels."
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed calls for latency.")] = 200,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    profile_ops: Annotated[
        bool,
        typer.Option(
            "--profile-ops",
            help="Also profile the model operator by operator (ONNX Runtime, OpenVINO): "
            "top ops by time, INT8/FP32/quantize-dequantize/reorder shares, CPU VNNI/AMX.",
        ),
    ] = False,
) -> None:
    """Measure MODEL on a hardware profile with the pipeline's measurement code.

    Without --data the inputs are random rows of the model's feature count and no
    accuracy is reported. Exit codes: 0 done, 2 bad input.
    """
    apply_defaults()
    from hamnet.api.benchmarker import Benchmarker

    try:
        x, y = _load_npz(data) if data is not None else (None, None)
        bench = Benchmarker(hardware, warmup=warmup, repeats=repeats, runtimes=runtime or None)
        results = bench.benchmark(model, x, y)
        op_profiles = bench.profile_ops(model, x) if profile_ops else []
    except HamnetError as err:
        raise _fail(err) from None
    if as_json:
        payload: dict[str, Any] = {
            "model": str(model),
            "hardware": bench.profile.name,
            "results": [m.to_dict() for m in results],
        }
        if profile_ops:
            payload["op_profiles"] = [p.to_dict() for p in op_profiles]
        console.print_json(json.dumps(payload))
        return
    table = Table(title=f"{model.name} on {bench.profile.name}")
    for col in ("runtime", "p50 ms", "p90 ms", "samples/s", "size MB", "accuracy"):
        table.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
    for m in results:
        table.add_row(
            m.runtime,
            f"{m.latency_p50_ms:.4f}",
            f"{m.latency_p90_ms:.4f}",
            f"{m.throughput_sps:,.0f}",
            f"{m.size_mb:.3f}",
            "-" if m.accuracy is None else f"{m.accuracy:.4f}",
        )
    console.print(table)
    for op_profile in op_profiles:
        _print_op_profile(model, op_profile)


def _print_op_profile(model: Path, op_profile: Any, top: int = 12) -> None:
    """Print one operator profile: the slowest ops, the category shares, the CPU."""
    from hamnet.evaluate.op_profile import CATEGORIES, CATEGORY_LABELS

    total = op_profile.total_us
    table = Table(
        title=f"{model.name} in {op_profile.runtime}: top ops by time "
        f"({total:.1f} us per call in {len(op_profile.ops)} ops, {op_profile.runs} runs)"
    )
    for col in ("op", "type", "kind", "kernel", "us", "share"):
        numeric = col in ("us", "share")
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for op in op_profile.top(top):
        share = op.time_us / total if total > 0 else 0.0
        table.add_row(
            op.name, op.op_type, CATEGORY_LABELS[op.category], op.kernel,
            f"{op.time_us:.2f}", f"{share:.0%}",
        )  # fmt: skip
    console.print(table)
    shares = ", ".join(
        f"{CATEGORY_LABELS[c]} {op_profile.share(c):.0%}"
        for c in CATEGORIES
        if op_profile.ops_in(c)
    )
    console.print(f"time shares: {shares}")
    console.print(op_profile.summary())


@stack_app.command("up")
def stack_up(
    host: Annotated[str, typer.Option(help="Bind address (loopback unless you mean it).")] = (
        "127.0.0.1"
    ),
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow")] = True,
    database: Annotated[
        str,
        typer.Option(
            help="Where MLflow, Optuna and Prefect keep their data: sqlite (files in the "
            "project) or postgresql (a server started in .stack/postgres, or --database-url)."
        ),
    ] = "sqlite",
    database_url: Annotated[
        str | None,
        typer.Option(help="A running PostgreSQL server to use (postgresql://user:pw@host/db)."),
    ] = None,
    postgres_port: Annotated[
        int | None, typer.Option(help="Port of the PostgreSQL server it starts (free one).")
    ] = None,
) -> None:
    """Start Prefect server, work pool, deployments, worker and MLflow server."""
    apply_defaults()
    from hamnet.ops import stack

    try:
        started = stack.up(
            ".", host=host, prefect_port=prefect_port, mlflow=mlflow, mlflow_port=mlflow_port,
            database=database, database_url=database_url, postgres_port=postgres_port,
        )  # fmt: skip
    except HamnetError as err:
        raise _fail(err) from None
    studies = started.database_urls.get("optuna")
    console.print(
        f"\nPoint your shell at it:\n  export PREFECT_API_URL={started.prefect_api_url}"
        + (f"\n  export MLFLOW_TRACKING_URI={started.mlflow_uri}" if started.mlflow_uri else "")
        + (f"\nOptuna studies (stages.nas.storage / stages.hpo.storage):\n  {studies}"
           if studies else "")
        + "\nthen: prefect deployment run hamnet-optimize/default --watch",
        soft_wrap=True,
    )  # fmt: skip


@stack_app.command("down")
def stack_down() -> None:
    """Stop the stack started by `hamnet stack up` in this folder."""
    from hamnet.ops import stack

    try:
        stack.down(".")
    except HamnetError as err:
        raise _fail(err) from None


from hamnet.serving.cli import ab_report, serve  # noqa: E402  (light: typer and rich only)

app.command("serve")(serve)
app.command("ab-report")(ab_report)


from hamnet.pipeline.gc import gc_command  # noqa: E402 - registered after the other commands

app.command(name="gc")(gc_command)


def main() -> None:  # pragma: no cover - console entry point
    """Entry point for ``python -m hamnet``."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
