"""Fixed-step solvers against ODEs with exact solutions (as torchdiffeq's tests/problems.py does)."""

import math

import pytest
import torch

from edgenode.errors import UsageError
from edgenode.ode.solvers import FIXED_STEP_METHODS, SolverConfig, integrate_fixed

ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_38": 4}


def exp_decay(t, h):  # dh/dt = -2 h + t, h(0)=1  →  h(t) = t/2 - 1/4 + 5/4 e^{-2t}
    return -2 * h + t


def exact(t):
    return t / 2 - 0.25 + 1.25 * math.exp(-2 * t)


@pytest.mark.parametrize("method", list(FIXED_STEP_METHODS))
def test_convergence_order_matches_the_method(method):
    h0 = torch.ones(1, dtype=torch.float64)
    errors = [abs(integrate_fixed(exp_decay, h0, n, method).item() - exact(1.0)) for n in (8, 16, 32)]
    observed = math.log2(errors[1] / errors[2])
    assert observed == pytest.approx(ORDERS[method], abs=0.25)


def test_classic_rk4_and_three_eighths_rule_differ():
    # On linear problems every 4-stage RK4 gives the same polynomial; a nonlinear one tells them apart.
    h0 = torch.full((1,), 0.5, dtype=torch.float64)
    classic = integrate_fixed(lambda t, h: h * h, h0, 1, "rk4")
    three_eighths = integrate_fixed(lambda t, h: h * h, h0, 1, "rk4_38")
    assert abs(classic.item() - three_eighths.item()) > 1e-6


def test_three_eighths_rule_matches_torchdiffeq_rk4():
    """On a nonlinear, time-dependent f: on the linear exp_decay every 4-stage RK4 agrees to 1e-16, so classic
    RK4 in place of the 3/8 rule would pass there (here it is off by about 3e-5)."""
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def f(t, h):
        return torch.sin(3 * t) * h * h - h

    h0 = torch.full((1,), 0.8, dtype=torch.float64)
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    theirs = torchdiffeq.odeint(f, h0, grid, method="rk4")[-1]
    ours = integrate_fixed(f, h0, 4, "rk4_38")
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    assert abs(integrate_fixed(f, h0, 4, "rk4").item() - theirs.item()) > 1e-6  # the test can tell them apart


@pytest.mark.parametrize("method", list(FIXED_STEP_METHODS))
def test_evaluations_per_step(method):
    calls = []

    def f(t, h):
        calls.append(t)
        return -h

    integrate_fixed(f, torch.ones(1), 3, method)
    assert len(calls) == 3 * {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_38": 4}[method]
    assert SolverConfig(method=method, n_steps=3).fixed_nfe == len(calls), "the NFE that export and bench report"


def test_float32_grid_has_exactly_n_steps():
    calls = []

    def f(t, h):
        calls.append(float(t))
        return torch.zeros_like(h)

    integrate_fixed(f, torch.ones(1, dtype=torch.float32), 20, "euler")
    assert len(calls) == 20 and calls[-1] == pytest.approx(0.95, abs=1e-6)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_a_bfloat16_state_steps_on_the_float32_grid(method):
    """Under autocast the state is bfloat16; the times and steps must still be those of the float32 graph that is
    deployed (a bfloat16 grid made Euler x 20's steps 0.047-0.055, and RK4 x 3's times 0.167/0.334/0.664)."""
    def times(dtype):
        seen = []

        def f(t, h):
            seen.append((float(t), t.dtype))
            return torch.ones_like(h)

        h = integrate_fixed(f, torch.zeros(2, dtype=dtype), 20 if method == "euler" else 3, method)
        return seen, h

    (bf16, h_bf16), (fp32, h_fp32) = times(torch.bfloat16), times(torch.float32)
    assert bf16 == fp32 and {dtype for _, dtype in bf16} == {torch.float32}
    assert h_bf16.dtype == torch.bfloat16 and float(h_bf16[0]) == pytest.approx(float(h_fp32[0]), abs=1e-2)


@pytest.mark.parametrize(
    "kwargs", [{"method": "rk5"}, {"method": "euler", "n_steps": 0}, {"method": "rk4", "n_steps": -3}, {"rtol": 0.0},
               {"atol": 0.0}, {"rtol": float("inf")}, {"atol": float("nan")}]
)
def test_bad_solver_config_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        SolverConfig(**kwargs)
