"""Automatic compression under a budget: per-layer sensitivity, allocation, refinement search,
Pareto front and the chosen model confirmed on the test split."""

from nncompress.search.allocate import OBJECTIVES, Budget, allocate
from nncompress.search.pareto import choose, pareto_front
from nncompress.search.search import SearchConfig, SearchResult, mutate, search
from nncompress.search.sensitivity import Sensitivity, analyze
from nncompress.search.space import SearchSpace, build, recipe_for, search_layers
from nncompress.search.trials import Trial, read_trials

__all__ = [
    "OBJECTIVES",
    "Budget",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "Sensitivity",
    "Trial",
    "allocate",
    "analyze",
    "build",
    "choose",
    "mutate",
    "pareto_front",
    "read_trials",
    "recipe_for",
    "search",
    "search_layers",
]
