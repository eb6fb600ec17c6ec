"""Disk use stays bounded: ``hamnet gc`` and the retention settings.

A workdir is filled the way nightly runs fill it (artifacts in the content-addressed
store, run indexes naming front and recommended candidates, Prefect result files,
reports, leftovers of interrupted writes), aged with ``os.utime``, and collected.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hamnet.core.artifacts import ArtifactRef, ArtifactStore, atomic_write_bytes, atomic_write_text
from hamnet.pipeline.gc import collect

from .conftest import FaultTable, files_under

DAY = 86400.0


def _age(path: Path, days: float) -> None:
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp))


def _artifact(store: ArtifactStore, tmp: Path, name: str, size: int = 20_000) -> ArtifactRef:
    src = tmp / f"{name}.onnx"
    src.write_bytes(name.encode() * (size // len(name)))
    return store.put(src, "onnx")


def _night(workdir: Path, run: str, refs: list[ArtifactRef], front: int, days_ago: float) -> None:
    """One finished run: the first ``front`` candidates on the front, the first recommended."""
    index = {
        "run_name": run,
        "status": "finished",
        "updated": time.time() - days_ago * DAY,
        "candidates": [
            {
                "id": ref.sha256[:12],
                "name": f"{run}-{i}",
                "artifact": ref.model_dump(mode="json"),
                "on_front": i < front,
                "recommended": i == 0,
            }
            for i, ref in enumerate(refs)
        ],
    }
    path = atomic_write_text(workdir / "runs" / f"{run}.json", json.dumps(index))
    (workdir / "reports" / run).mkdir(parents=True)
    (workdir / "reports" / run / "candidates.csv").write_text("name\n")
    cache = workdir / "prefect-results" / f"key-{run}"
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps({"result": "", "refs": [r.sha256 for r in refs]}))
    for p in [path, cache, workdir / "reports" / run, *[Path(r.path).parent for r in refs]]:
        _age(p, days_ago)


@pytest.fixture
def nightly(tmp_path: Path) -> Path:
    """Ten nights two days apart, three candidates each (front + recommended, front, off)."""
    workdir = tmp_path / ".hamnet"
    store = ArtifactStore(workdir / "artifacts")
    for night in range(10):
        refs = [_artifact(store, tmp_path, f"n{night}c{i}") for i in range(3)]
        _night(workdir, f"night-{night}", refs, front=2, days_ago=2 * (10 - night))
    leftover = store.staging_dir() / "model.onnx"
    leftover.write_bytes(b"half a model")
    _age(leftover.parent, 1)
    return workdir


def test_gc_keeps_recent_fronts_and_bounds_the_rest(
    nightly: Path, fault_table: FaultTable, request: pytest.FixtureRequest
) -> None:
    before = sum(p.stat().st_size for p in files_under(nightly))
    dry = collect(nightly, keep_runs=3, max_age_days=5)
    assert not dry.applied and sum(p.stat().st_size for p in files_under(nightly)) == before

    report = collect(nightly, keep_runs=3, max_age_days=5, apply=True)
    assert report.applied and report.size_bytes == dry.size_bytes > 0
    shas = {p.name for p in (nightly / "artifacts").glob("??/*")}
    indexes = {json.loads(p.read_text())["run_name"]: p for p in (nightly / "runs").glob("*")}
    # the last 3 nights keep their 2 front artifacts; the off-front ones of the nights
    # 2 and 4 days ago are still within max_age_days; all else goes
    assert len(shas) == 3 * 2 + 2 and report.kept_artifacts == 6
    assert sorted(indexes) == ["night-7", "night-8", "night-9"]
    assert sorted(p.name for p in (nightly / "reports").iterdir()) == sorted(indexes)
    assert len(list((nightly / "prefect-results").iterdir())) == 2
    assert not list((nightly / "artifacts" / "_staging").iterdir())
    after = sum(p.stat().st_size for p in files_under(nightly))

    again = collect(nightly, keep_runs=3, max_age_days=5, apply=True)
    assert again.items == []  # a fixed point: running it nightly does not keep deleting
    fault_table.add(
        request,
        "disk use: 10 nightly runs, gc with keep_runs=3, max_age_days=5",
        f"{report.summary()}; workdir {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB",
        "nothing needed: front + recommended of the last 3 runs kept",
    )


def test_gc_max_age_zero_collects_everything_off_the_front(nightly: Path) -> None:
    report = collect(nightly, keep_runs=1, max_age_days=0, apply=True)
    assert {p.name for p in (nightly / "artifacts").glob("??/*")} == {
        json.loads((nightly / "runs" / "night-9.json").read_text())["candidates"][i]["artifact"][
            "sha256"
        ]
        for i in (0, 1)
    }
    assert report.kept_artifacts == 2


def test_gc_command_is_a_dry_run_unless_told_yes(nightly: Path) -> None:
    from hamnet.ops.cli import app

    runner = CliRunner()
    before = files_under(nightly)
    args = ["gc", "--workdir", str(nightly), "--keep-runs", "2", "--max-age-days", "3"]
    dry = runner.invoke(app, args)
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and "dry run" in dry.output
    assert files_under(nightly) == before
    done = runner.invoke(app, [*args, "--yes"])
    assert done.exit_code == 0, done.output
    assert "deleted" in done.output and len(files_under(nightly)) < len(before)
    bad = runner.invoke(app, [*args[:3], "--keep-runs", "0"])
    assert bad.exit_code == 2 and "keep_runs must be at least 1, but got 0" in bad.output


def test_atomic_write_replaces_whole_files_only(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):  # the write fails half-way: the old file stays whole
        atomic_write_bytes(target, ["not", "bytes"])  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]  # no temp file left


def test_gc_leaves_a_run_in_progress_alone(nightly: Path, tmp_path: Path) -> None:
    store = ArtifactStore(nightly / "artifacts")
    started = time.time() - 30
    listed = _artifact(store, tmp_path, "listed-by-the-running-run")
    unlisted = _artifact(store, tmp_path, "stored-but-not-yet-added")
    index = {"run_name": "now", "status": "running", "started": started, "updated": time.time()}
    index["candidates"] = [{"id": "x", "artifact": listed.model_dump(mode="json")}]
    atomic_write_text(nightly / "runs" / "now.json", json.dumps(index))
    _age(Path(listed.path).parent, 3)  # an old artifact the running run reuses from the cache

    collect(nightly, keep_runs=1, max_age_days=0, apply=True)
    assert listed.is_present() and unlisted.is_present()
    assert (nightly / "runs" / "now.json").is_file()
