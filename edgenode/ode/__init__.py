"""ODE integration shared by training (fixed-step solvers) and export (the unrolled graph)."""

from edgenode.ode.solvers import FIXED_STEP_METHODS, SolverConfig, integrate_fixed, step_function

__all__ = ["FIXED_STEP_METHODS", "SolverConfig", "integrate_fixed", "step_function"]
