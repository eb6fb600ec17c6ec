"""Module paths from before the layered packages still import, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from hamnet.core.moved import MOVED_MODULES, new_name


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_every_old_module_path_imports_the_new_module(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED_MODULES[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED_MODULES[old])


def test_submodules_of_a_moved_package_are_the_same_objects() -> None:
    assert new_name("hamnet.pruning.hf") == "hamnet.compress.pruning.hf"
    assert new_name("hamnet.core.config") is None
    with pytest.warns(DeprecationWarning):
        from hamnet.pruning.structured import prune_hamnet
    from hamnet.compress.pruning.structured import prune_hamnet as current

    assert prune_hamnet is current


@pytest.mark.parametrize(
    ("package", "name", "home"),
    [
        ("hamnet.pipeline", "run_pipeline", "hamnet.pipeline.run"),
        ("hamnet.training", "train_model", "hamnet.training.trainer"),
        ("hamnet.tracking", "Tracker", "hamnet.tracking.tracker"),
        ("hamnet.api", "PRUNE_RATIOS", "hamnet.api.compiler"),
    ],
)
def test_packages_that_replaced_a_module_forward_its_names(
    package: str, name: str, home: str
) -> None:
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} moved to {home}.{name}"):
        value = getattr(importlib.import_module(package), name)
    assert value is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = importlib.import_module(package).no_such_name


def test_import_hamnet_itself_warns_nothing() -> None:
    code = "import warnings; warnings.simplefilter('error'); import hamnet, hamnet.ops.cli"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
