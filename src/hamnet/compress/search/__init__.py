"""Architecture search and hyperparameter optimization over HAMNet.

:mod:`hamnet.compress.search.space` reads search spaces (YAML, validated) and turns an Optuna
trial's suggestions into HAMNet and trainer settings; :mod:`hamnet.compress.search.strategies`
builds the Optuna samplers and pruners, which are plugins (kinds ``"sampler"`` and
``"pruner"``, one module each under ``samplers/`` and ``pruners/``); the executor
(``cluster``, ``storage``, ``driver``, ``worker``) runs trials on Ray. Optuna is imported
only by the functions that use it, so importing this package stays light.
"""

from __future__ import annotations

from hamnet.compress.search.space import (
    ArchitectureChoice,
    CategoricalParameter,
    EvolutionSection,
    FloatParameter,
    InfeasibleParams,
    IntParameter,
    SampledParams,
    SearchSpace,
    grid_values,
    load_search_space,
    search_space_from_dict,
    suggest,
    to_architecture,
    to_hamnet_section,
    to_train_config,
)
from hamnet.compress.search.strategies import (
    OBJECTIVE_DIRECTIONS,
    directions,
    hypervolume,
    make_pruner,
    make_sampler,
)

__all__ = [
    "OBJECTIVE_DIRECTIONS",
    "ArchitectureChoice",
    "CategoricalParameter",
    "EvolutionSection",
    "FloatParameter",
    "InfeasibleParams",
    "IntParameter",
    "SampledParams",
    "SearchSpace",
    "directions",
    "grid_values",
    "hypervolume",
    "load_search_space",
    "make_pruner",
    "make_sampler",
    "search_space_from_dict",
    "suggest",
    "to_architecture",
    "to_hamnet_section",
    "to_train_config",
]
