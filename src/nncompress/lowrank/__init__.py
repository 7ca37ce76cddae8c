"""Low-rank factorization: pure decompositions (``decompose``), rank selection (``ranks``), layer
surgery (``layers``), and the steps ``svd``, ``tucker``, ``cp``, ``spatial-svd`` and ``lowrank-budget``
(importing this package registers them).

Factorized layers are plain ``nn.Sequential``s of ``nn.Linear`` / ``nn.Conv2d``: a saved model loads
without this package.
"""

from nncompress.lowrank.budget import LowRankBudget
from nncompress.lowrank.steps import CPFactorize, SpatialSVDFactorize, SVDFactorize, TuckerFactorize

__all__ = ["CPFactorize", "LowRankBudget", "SVDFactorize", "SpatialSVDFactorize", "TuckerFactorize"]
