"""Solvers as pure step functions, and the solver configuration that travels with a model.

A fixed-step solver is nothing but its step: ``h_next = step(f, t, dt, h)``. Training with a fixed-step
method and exporting the unrolled graph call the very same function, so the deployed discretisation is
exactly the trained one. The time grid is always ``linspace(t0, t1, n_steps + 1)`` — never derived from a
step size, which in float32 can add a step (torchdiffeq's ``step_size=0.05`` over [0, 1] gives 21 or more).

``rk4`` here is the classic Runge-Kutta scheme (weights 1/6, 2/6, 2/6, 1/6). torchdiffeq's ``'rk4'`` is the
3/8 rule; it is available as ``rk4_38`` for checkpoints that were trained with it.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from edgenode.errors import UsageError, is_whole_number

ODEFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[[ODEFunc, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def euler_step(f: ODEFunc, t: torch.Tensor, dt: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return h + dt * f(t, h)


def midpoint_step(f: ODEFunc, t: torch.Tensor, dt: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    k1 = f(t, h)
    return h + dt * f(t + dt / 2, h + dt / 2 * k1)


def rk4_step(f: ODEFunc, t: torch.Tensor, dt: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Classic RK4: (k1 + 2 k2 + 2 k3 + k4) / 6."""
    k1 = f(t, h)
    k2 = f(t + dt / 2, h + dt / 2 * k1)
    k3 = f(t + dt / 2, h + dt / 2 * k2)
    k4 = f(t + dt, h + dt * k3)
    return h + dt / 6 * (k1 + 2 * (k2 + k3) + k4)


def rk4_38_step(f: ODEFunc, t: torch.Tensor, dt: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """RK4 3/8 rule, as torchdiffeq's ``'rk4'``: (k1 + 3 k2 + 3 k3 + k4) / 8."""
    k1 = f(t, h)
    k2 = f(t + dt / 3, h + dt / 3 * k1)
    k3 = f(t + dt * 2 / 3, h + dt * (k2 - k1 / 3))
    k4 = f(t + dt, h + dt * (k1 - k2 + k3))
    return h + dt / 8 * (k1 + 3 * (k2 + k3) + k4)


FIXED_STEP_METHODS: dict[str, Step] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "rk4": rk4_step,
    "rk4_38": rk4_38_step,
}
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_38": 4}
ADAPTIVE_METHODS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
FLOAT32_EPS = 2.0**-23  # float32 resolves no relative error below this: a float32 solve asked for less underflows its step


def step_function(method: str) -> Step:
    try:
        return FIXED_STEP_METHODS[method]
    except KeyError:
        raise UsageError(
            f"unknown fixed-step method {method!r}", f"choose one of {', '.join(FIXED_STEP_METHODS)}"
        ) from None


def integrate_fixed(
    f: ODEFunc, h0: torch.Tensor, n_steps: int, method: str = "rk4", t0: float = 0.0, t1: float = 1.0
) -> torch.Tensor:
    """Integrate dh/dt = f(t, h) from t0 to t1 with ``n_steps`` equal steps of ``method``.

    The loop has a fixed trip count, so tracing it (ONNX export) yields exactly ``n_steps`` explicit steps.
    Times are at least float32 whatever the state's dtype: under bfloat16 autocast a grid in the state's dtype
    has 8 bits of mantissa, so Euler × 20 would train on steps of 0.047–0.055 and deploy on steps of 0.05.
    """
    step = step_function(method)
    grid = torch.linspace(t0, t1, n_steps + 1, dtype=torch.promote_types(h0.dtype, torch.float32), device=h0.device)
    h = h0
    for i in range(n_steps):
        h = step(f, grid[i], grid[i + 1] - grid[i], h)
    return h


@dataclass(frozen=True)
class SolverConfig:
    """How the ODE block is integrated; recorded in every checkpoint and artifact.

    ``method`` is an adaptive torchdiffeq method (``dopri5`` …, using ``rtol``/``atol``) or a fixed-step
    method of :data:`FIXED_STEP_METHODS` (using ``n_steps``). ``adjoint`` trades compute for memory.
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    n_steps: int = 20
    adjoint: bool = False

    def __post_init__(self):
        if self.method not in FIXED_STEP_METHODS and self.method not in ADAPTIVE_METHODS:
            known = ", ".join([*ADAPTIVE_METHODS, *FIXED_STEP_METHODS])
            raise UsageError(f"unknown ODE solver {self.method!r}", f"choose one of {known}")
        if not is_whole_number(self.n_steps):
            raise UsageError(f"solver steps must be a positive integer, got {self.n_steps!r}", "pass --steps 1 or more")
        if not (0 < self.rtol < math.inf and 0 < self.atol < math.inf):  # inf would accept any step: no solve at all
            raise UsageError(f"solver tolerances must be finite and positive, got rtol={self.rtol} atol={self.atol}",
                             "use positive tolerances such as 1e-3")

    @property
    def is_adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    @property
    def fixed_nfe(self) -> int | None:
        """Function evaluations of one solve for a fixed-step method (None when adaptive)."""
        return None if self.is_adaptive else EVALS_PER_STEP[self.method] * self.n_steps

    def describe(self) -> str:
        if self.is_adaptive:
            return f"{self.method} (rtol={self.rtol:g}, atol={self.atol:g})"
        return f"{self.method} × {self.n_steps} step{'' if self.n_steps == 1 else 's'}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SolverConfig":
        return cls(**data)
