"""The ``hpo`` stage: hyperparameter search over the space's ``training`` group."""

from __future__ import annotations

from hamnet.pipeline.stages._search import SearchStage


class HPOStage(SearchStage):
    """Hyperparameter search over the space's ``training`` group for ``model.hamnet``."""

    name = "hpo"
    section = "hpo"
    order = 30
    group = "training"


PLUGIN = HPOStage
