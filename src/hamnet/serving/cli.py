"""The ``hamnet serve`` and ``hamnet ab-report`` commands (registered in :mod:`hamnet.ops.cli`).

Imports nothing heavy at import time: FastAPI, uvicorn, MLflow and the runtimes are
imported when a command runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hamnet.core.errors import ConfigError, HamnetError

if TYPE_CHECKING:
    from hamnet.serving.state import ServeSettings, ServingState

console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2


def _fail(err: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


def parse_arms(model: str, ab: str | None, arm: list[str]) -> tuple[dict[str, str], dict | None]:
    """Work out the arms to serve and the split.

    Without ``ab`` one arm (named after the alias, else ``main``) serves ``model``.
    With ``ab`` (``champion=0.9,challenger=0.1``) each arm serves the model given by
    ``--arm NAME=REF``, else the same registered model under the alias NAME.

    Raises:
        ConfigError: If an ``--arm`` item is malformed or an arm has no model.
    """
    from hamnet.serving.ab import parse_split
    from hamnet.serving.models import ModelRef

    explicit: dict[str, str] = {}
    for item in arm:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            raise ConfigError(f"--arm must be NAME=REF, but got {item!r}")
        explicit[name.strip()] = ref.strip()
    primary = ModelRef.parse(model)
    if ab is None:
        return {primary.alias or "main": model}, None
    split = parse_split(ab)
    arms = {}
    for name in split:
        arms[name] = explicit.get(name) or (
            model if name == primary.alias else primary.with_alias(name).text
        )
    return arms, split


def serve(
    model: Annotated[
        str,
        typer.Argument(help="models:/<name>@<alias>, models:/<name>/<version> or a model file."),
    ],
    host: Annotated[
        str, typer.Option(help="Bind address; loopback unless you mean to expose it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    hardware: Annotated[str, typer.Option(help="Hardware profile name or YAML path.")] = (
        "x86-avx2"
    ),
    runtime: Annotated[
        str | None, typer.Option(help="Force a runtime (default: registry tag, else profile).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads (default: the profile's, else 1).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")
    ] = None,
    batch_window_ms: Annotated[
        float, typer.Option(help="Dynamic batching window in ms; 0 disables batching.")
    ] = 2.0,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Most rows per inference (default: profile's).")
    ] = None,
    poll_seconds: Annotated[
        float, typer.Option(help="Check the alias for a new version every N s; 0 disables.")
    ] = 30.0,
    ab: Annotated[
        str | None,
        typer.Option(help="A/B split over aliases (or --arm models): champion=0.9,challenger=0.1"),
    ] = None,
    arm: Annotated[
        list[str] | None, typer.Option(help="NAME=REF: the model of an A/B arm (repeatable).")
    ] = None,
    ab_log: Annotated[
        Path | None, typer.Option(help="JSON-lines file recording every request.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for requests without a key.")] = None,
    log_level: Annotated[str, typer.Option(help="The HTTP server's log level.")] = "warning",
    server: Annotated[
        str,
        typer.Option(
            help="HTTP server: auto (granian when installed, else uvicorn), uvicorn or "
            "granian. With --ray-address, Ray Serve's proxy serves HTTP instead."
        ),
    ] = "auto",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Serve on Ray Serve: 'local' (a Ray for this process), 'auto' (the cluster "
            "`ray start` runs here) or a cluster address. Needs the serve extra."
        ),
    ] = None,
    replicas: Annotated[
        int, typer.Option(min=1, help="Ray Serve replicas (with --ray-address).")
    ] = 1,
    replica_cpus: Annotated[
        float, typer.Option(min=0.0, help="CPUs Ray reserves per replica (with --ray-address).")
    ] = 1.0,
) -> None:
    """Serve a model over HTTP: /predict, /health, /ready, /metrics, /model, /reload.

    With --ray-address the same app runs on Ray Serve: --replicas copies behind Ray's
    HTTP proxy, each batching with @serve.batch.

    Exit codes: 0 stopped, 2 bad input (model, profile, split, Ray settings).
    """
    from hamnet.core.env import apply_defaults

    apply_defaults()
    try:
        from hamnet.serving.servers import check_address, resolve_server, run_server

        http_server = resolve_server(server) if ray_address is None else server
        arms, split = parse_arms(model, ab, arm or [])
        if ab is not None and ab_log is None:
            ab_log = Path("ab-log.jsonl")
        from hamnet.serving.app import ServeSettings, ServingState, create_app

        settings = ServeSettings(
            arms=arms, split=split, hardware=hardware, runtime=runtime, threads=threads,
            tracking_uri=tracking_uri, max_batch_size=max_batch_size,
            batch_window_ms=batch_window_ms, poll_seconds=poll_seconds, ab_log=ab_log, seed=seed,
        )  # fmt: skip
        if ray_address is not None:
            _serve_on_ray(settings, ray_address, replicas, replica_cpus, host, port)
            return
        check_address(host, port)
        state = ServingState.build(settings)
    except HamnetError as err:
        raise _fail(err) from None
    _announce(state, host, port, http_server)
    run_server(create_app(state), server=http_server, host=host, port=port, log_level=log_level)


def _serve_on_ray(
    settings: ServeSettings, address: str, replicas: int, replica_cpus: float, host: str, port: int
) -> None:
    """Deploy on Ray Serve and block until Ctrl-C or SIGTERM, then tear down."""
    import signal
    import threading

    from hamnet.serving.ray_serve import RayServer

    stop = threading.Event()
    server = RayServer(
        settings, address=address, replicas=replicas, host=host, port=port,
        replica_cpus=replica_cpus,
    )  # fmt: skip
    try:
        server.start()
    except HamnetError:
        raise
    except Exception as err:  # a replica that cannot load its model fails the deployment
        raise ConfigError(
            f"the Ray Serve deployment must start, but it failed: {type(err).__name__}: {err}"
        ) from None
    # After ray.init: Ray's core worker installs its own SIGTERM handler when it starts.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rows = settings.max_batch_size or "the profile's"
    try:
        console.print(
            f"[bold green]serving[/] {escape(', '.join(settings.arms.values()))} on Ray Serve "
            f"({replicas} replica{'s' if replicas > 1 else ''}, Ray at {escape(address)}) on "
            f"[link]{server.url}[/link] · batching ≤{rows} rows / "
            f"{settings.batch_window_ms:g} ms (@serve.batch)",
            highlight=False,
        )
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _announce(state: ServingState, host: str, port: int, server: str) -> None:
    """Print what is served, where, and how (server, batching, alias polling, A/B log)."""
    from hamnet.serving.servers import describe

    settings = state.settings
    for a in state.arms.values():
        info = a.slot.model.info
        console.print(
            f"[bold green]serving[/] {escape(info.name)} v{escape(info.version)} "
            f"([cyan]{info.runtime}[/], {info.features} features → {info.classes} classes)"
            + (f" as arm [bold]{escape(a.name)}[/] {100 * a.weight:g}%" if settings.split else ""),
            highlight=False,
        )
    batching = (
        f"batching ≤{state.max_batch_size} rows / {settings.batch_window_ms:g} ms"
        if settings.batch_window_ms > 0
        else "batching off"
    )
    polling = (
        f"alias poll {settings.poll_seconds:g} s" if settings.poll_seconds > 0 else "alias poll off"
    )
    console.print(
        f"on [link]http://{host}:{port}[/link] · {describe(server)} · {batching} · {polling}"
        + (f" · A/B log {settings.ab_log}" if settings.ab_log else ""),
        highlight=False,
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def ab_report(
    log: Annotated[Path, typer.Argument(help="The A/B log written by `hamnet serve --ab`.")],
    baseline: Annotated[
        str | None, typer.Option(help="Arm to compare with (default: most requests).")
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Compare A/B arms: latency (Welch t-test), error rate and accuracy (two-proportion z).

    Exit codes: 0 done, 2 bad input.
    """
    from hamnet.serving.ab import ab_report as compute
    from hamnet.serving.ab import read_log

    try:
        report = compute(read_log(log), baseline=baseline, confidence=confidence)
    except HamnetError as err:
        raise _fail(err) from None
    out = Console()  # sized when the command runs (COLUMNS)
    if as_json:
        out.print_json(json.dumps(report.to_dict(), default=str))
        return
    arms = Table(title=f"A/B arms in {log.name}")
    for col in ("arm", "versions", "requests", "error rate", "mean ms", "p50 ms", "p95 ms",
                "labelled", "accuracy"):  # fmt: skip
        arms.add_column(col, justify="left" if col in ("arm", "versions") else "right")
    for s in report.arms:
        arms.add_row(
            s.arm, ", ".join(s.versions), str(s.requests), _fmt(s.error_rate, 4),
            _fmt(s.latency_mean_ms), _fmt(s.latency_p50_ms), _fmt(s.latency_p95_ms),
            str(s.labelled), _fmt(s.accuracy, 4),
        )  # fmt: skip
    out.print(arms)
    level = f"{100 * report.confidence:g}%"
    diffs = Table(title=f"difference vs {report.baseline} ({level} CI)")
    for col in ("metric", "arm", "difference", f"{level} CI", "p-value", "test", "significant"):
        left = col in ("metric", "arm", "test")
        diffs.add_column(col, justify="left" if left else "right", no_wrap=left)
    for c in report.comparisons:
        digits = 3 if c.metric == "latency_ms" else 4
        diffs.add_row(
            c.metric, c.arm, _fmt(c.difference, digits),
            f"[{_fmt(c.ci_low, digits)}, {_fmt(c.ci_high, digits)}]", _fmt(c.p_value, 4), c.test,
            "yes" if c.significant else "no",
        )  # fmt: skip
    out.print(diffs)
