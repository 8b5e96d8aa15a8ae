"""Parity: does a deployed artifact still compute what the trained Neural ODE computes?

``run_parity(ParityConfig(...)) -> ParityReport`` compares artifacts with the checkpoint integrated by an
adaptive solver at tight tolerance; each :class:`ParityResult` judges itself against
:class:`ParityThresholds` (``bool(result)`` is the verdict) and carries an error attribution by stage.
"""

from edgenode.parity.compare import (
    ClassChange,
    LogitDiff,
    ParityResult,
    ParityThresholds,
    StageDiff,
    compare_logits,
    diff_logits,
)
from edgenode.parity.run import DEFAULT_REFERENCE_SOLVER, ParityConfig, ParityReport, run_parity

__all__ = [
    "DEFAULT_REFERENCE_SOLVER",
    "ClassChange",
    "LogitDiff",
    "ParityConfig",
    "ParityReport",
    "ParityResult",
    "ParityThresholds",
    "StageDiff",
    "compare_logits",
    "diff_logits",
    "run_parity",
]
