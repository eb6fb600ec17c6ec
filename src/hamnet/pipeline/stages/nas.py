"""The ``nas`` stage: neural architecture search over the space's ``architecture`` genes."""

from __future__ import annotations

from hamnet.pipeline.stages._search import SearchStage


class NASStage(SearchStage):
    """Neural architecture search over the space's ``architecture`` genes."""

    name = "nas"
    section = "nas"
    order = 20
    group = "architecture"


PLUGIN = NASStage
