"""The ``hamnet`` command line.

Every command turns a :class:`~hamnet.errors.HamnetError` into one clear line on
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

from hamnet._env import apply_defaults
from hamnet.errors import ConfigError, HamnetError

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
        from hamnet.config import load_config
        from hamnet.pipeline import preflight

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
            from hamnet.pipeline import run_pipeline

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
def validate(
    files: Annotated[list[Path], typer.Argument(help="Config or hardware profile YAML files.")],
) -> None:
    """Validate config and hardware profile files; exit 2 on the first invalid one."""
    from hamnet.config import load_config
    from hamnet.hardware import load_profile_file, profiles_dir

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
    from hamnet.hardware import available_profiles, load_profile

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


@stack_app.command("up")
def stack_up(
    host: Annotated[str, typer.Option(help="Bind address (loopback unless you mean it).")] = (
        "127.0.0.1"
    ),
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow")] = True,
) -> None:
    """Start Prefect server, work pool, deployments, worker and MLflow server."""
    apply_defaults()
    from hamnet import stack

    try:
        started = stack.up(
            ".", host=host, prefect_port=prefect_port, mlflow=mlflow, mlflow_port=mlflow_port
        )
    except HamnetError as err:
        raise _fail(err) from None
    console.print(
        f"\nPoint your shell at it:\n  export PREFECT_API_URL={started.prefect_api_url}"
        + (f"\n  export MLFLOW_TRACKING_URI={started.mlflow_uri}" if started.mlflow_uri else "")
        + "\nthen: prefect deployment run hamnet-optimize/default --watch"
    )


@stack_app.command("down")
def stack_down() -> None:
    """Stop the stack started by `hamnet stack up` in this folder."""
    from hamnet import stack

    try:
        stack.down(".")
    except HamnetError as err:
        raise _fail(err) from None


def main() -> None:  # pragma: no cover - console entry point
    """Entry point for ``python -m hamnet``."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
