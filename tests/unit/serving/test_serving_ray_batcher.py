"""The Ray Serve side without a cluster: settings checks and the CLI's options.

``@serve.batch`` reads the replica's context when its queue starts, so the batching
itself is tested on a real local Ray (``tests/integration/test_serving_ray.py``).
"""

from __future__ import annotations

import pytest

from hamnet.core.errors import ConfigError
from hamnet.serving.state import ServeSettings

pytest.importorskip("ray.serve", reason="needs the serve extra (ray[serve])")


def test_bad_ray_settings_are_refused() -> None:
    from hamnet.serving.ray_serve import RayServer, build_application

    settings = ServeSettings(arms={"main": "m.onnx"})
    with pytest.raises(ConfigError, match="replicas must be at least 1, but got 0"):
        build_application(settings, replicas=0)
    with pytest.raises(ConfigError, match="replica_cpus must be non-negative, but got -1"):
        build_application(settings, replica_cpus=-1.0)
    with pytest.raises(ConfigError, match="address must be local, auto or host:port"):
        RayServer(settings, address=" ")


def test_the_cli_offers_ray_options() -> None:
    from typer.testing import CliRunner

    from hamnet.ops.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--ray-address" in result.output and "--replicas" in result.output


def test_without_ray_serve_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import ray

    from hamnet.core.errors import MissingDependencyError
    from hamnet.serving.ray_serve import require_serve

    monkeypatch.delattr(ray, "serve", raising=False)
    monkeypatch.setitem(sys.modules, "ray.serve", None)  # what an absent package looks like
    with pytest.raises(MissingDependencyError, match=r"pip install 'hamnet\[serve\]'"):
        require_serve()
