"""Test-only stage hooks that make a stage fail or hang, and a flow runner that adds them.

The hooks go through hamnet's real seam (:mod:`hamnet.pipeline.hooks`): they run before
every stage attempt in the process that runs the stage, so a failure is retried by
Prefect like any other. In this process::

    with stage_hooks(FailFirstAttempts("export", times=1)):
        run_flow(...)

In a flow subprocess (to kill it mid-stage)::

    python tests/reliability/faults.py <config> <base_dir> --hang export:600

which adds the hooks and prints ``SUMMARY <json>`` of the ``hamnet-optimize`` flow.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING

from hamnet.core.errors import StageError
from hamnet.pipeline.hooks import StageHook, stage_hooks

if TYPE_CHECKING:
    from pathlib import Path

    from hamnet.pipeline.plan import StageContext


def _workdir(ctx: StageContext) -> Path:
    return ctx.store.root.parent


class FailFirstAttempts(StageHook):
    """The first ``times`` attempts of ``stage`` raise :class:`StageError`.

    Attempts are counted in ``<workdir>/fault-<stage>.count``, so the count survives
    retries in new threads and reruns in new processes.
    """

    def __init__(self, stage: str, times: int = 1) -> None:
        self.stage = stage
        self.times = times

    def before_stage(self, stage: str, ctx: StageContext) -> None:
        if stage != self.stage:
            return
        counter = _workdir(ctx) / f"fault-{stage}.count"
        done = int(counter.read_text()) if counter.is_file() else 0
        if done < self.times:
            counter.write_text(str(done + 1))
            raise StageError(f"injected fault in stage {stage!r} (attempt {done + 1})")


class HangInStage(StageHook):
    """``stage`` writes ``<workdir>/hang-<stage>.started`` (its pid), then sleeps.

    A test waits for the marker and kills the process (or a server) mid-stage.
    """

    def __init__(self, stage: str, seconds: float = 3600.0) -> None:
        self.stage = stage
        self.seconds = seconds

    def before_stage(self, stage: str, ctx: StageContext) -> None:
        if stage != self.stage:
            return
        (_workdir(ctx) / f"hang-{stage}.started").write_text(str(os.getpid()))
        time.sleep(self.seconds)


def _hooks(args: argparse.Namespace) -> list[StageHook]:
    hooks: list[StageHook] = []
    for spec in args.fail:
        stage, _, times = spec.partition(":")
        hooks.append(FailFirstAttempts(stage, int(times or 1)))
    for spec in args.hang:
        stage, _, seconds = spec.partition(":")
        hooks.append(HangInStage(stage, float(seconds or 3600)))
    return hooks


def main(argv: list[str] | None = None) -> None:
    """Run the ``hamnet-optimize`` flow with the requested faults; print its summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config_path")
    parser.add_argument("base_dir")
    parser.add_argument("--fail", action="append", default=[], metavar="STAGE:TIMES")
    parser.add_argument("--hang", action="append", default=[], metavar="STAGE:SECONDS")
    args = parser.parse_args(argv)

    from flows.hamnet_optimize import hamnet_optimize

    with stage_hooks(*_hooks(args)):
        summary = hamnet_optimize(config_path=args.config_path, base_dir=args.base_dir)
    print("SUMMARY", json.dumps(summary))


if __name__ == "__main__":
    main()
