"""The ODE block as N explicit fixed steps: what gets exported, whatever solver the model trained with.

``model.with_solver(SolverConfig(method, n_steps=N))`` *is* the unrolled model: ``integrate_fixed`` loops a
fixed number of times over ``linspace(0, 1, N + 1)``, so tracing it yields N copies of the step, every one
calling the same ``f`` with the same weights, and no solver loop or data-dependent control flow remains.
The exported graph is checked by counting its Conv nodes (see :func:`expected_conv_nodes`).

Which discretisation: a checkpoint trained with a fixed-step solver *is* that discretisation (the weights
were fitted to its truncation error), so by default it is unrolled with exactly its trained method and step
count. An adaptive checkpoint is unrolled with classic RK4 and a step count chosen on the validation split
(``steps="auto"``, see :mod:`edgenode.export.steps`).
"""

from __future__ import annotations

from torch import nn

from edgenode.errors import UsageError, is_whole_number
from edgenode.model import NeuralODECNN
from edgenode.ode.solvers import EVALS_PER_STEP, FIXED_STEP_METHODS, SolverConfig

DEFAULT_METHOD = "rk4"
AUTO = "auto"
# The exported graph holds one copy of the ODE function per stage of every step, so export time and graph
# size grow with N (an audit: 1000 steps took 10 s, 100000 ran for over 5 minutes and wrote nothing).
# Unrolling exists to be cheaper than the adaptive solve it replaces: at 256 RK4 steps the graph already
# evaluates f 1024 times, more than an adaptive solve of these models typically needs, while the automatic
# sweep stops at 16 and the paper preset trains with 20 Euler steps.
MAX_STEPS = 256

METHOD_DESCRIPTIONS = {
    "euler": "explicit Euler (1 evaluation of f per step)",
    "midpoint": "explicit midpoint (2 evaluations per step)",
    "rk4": "classic Runge-Kutta 4 (weights 1/6, 2/6, 2/6, 1/6; 4 evaluations per step)",
    "rk4_38": "Runge-Kutta 4 3/8 rule, torchdiffeq's 'rk4' (weights 1/8, 3/8, 3/8, 1/8; 4 evaluations per step)",
}


def check_method(method: str) -> str:
    if method not in FIXED_STEP_METHODS:
        raise UsageError(f"--method {method!r} is not a fixed-step method", f"choose one of {', '.join(FIXED_STEP_METHODS)}")
    return method


def check_steps(steps: int) -> int:
    """A step count to unroll: a whole number from 1 to :data:`MAX_STEPS` (why the bound: see there)."""
    if not is_whole_number(steps):
        raise UsageError(f"--steps {steps!r} is not a positive whole number", f"pass --steps 4 (1 to {MAX_STEPS}) or --steps auto")
    if steps > MAX_STEPS:
        raise UsageError(f"--steps {steps} is out of range: an unrolled graph holds 1 to {MAX_STEPS} steps",
                         "pass --steps 4, or --steps auto to let the validation split choose")
    return steps


def resolve_method(trained: SolverConfig, method: str | None) -> str:
    """The deploy method: the user's, else the trained fixed-step method, else classic RK4."""
    if method is not None:
        return check_method(method)
    return DEFAULT_METHOD if trained.is_adaptive else trained.method


def resolve_steps(trained: SolverConfig, method: str, steps: int | str | None) -> int | str:
    """The user's step count, else the trained one when deploying the trained method, else ``"auto"``."""
    if steps is not None:
        return steps if steps == AUTO else check_steps(steps)
    if not trained.is_adaptive and method == trained.method:
        if trained.n_steps > MAX_STEPS:  # named as the checkpoint's, not as a --steps the user never passed
            raise UsageError(f"the checkpoint was trained with {trained.describe()}: out of range for export, an unrolled "
                             f"graph holds 1 to {MAX_STEPS} steps", "pass --steps N to export a shorter discretisation, or --steps auto")
        return trained.n_steps
    return AUTO


def deploy_solver(method: str, n_steps: int) -> SolverConfig:
    return SolverConfig(method=check_method(method), n_steps=check_steps(n_steps))


def unroll(model: NeuralODECNN, method: str = DEFAULT_METHOD, n_steps: int = 4) -> NeuralODECNN:
    """A copy of ``model`` (eval mode) whose ODE block is ``n_steps`` explicit steps of ``method`` over [0, 1]."""
    return fold_batchnorm(model.with_solver(deploy_solver(method, n_steps)).eval())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the conv before it, in place, and return ``model``.

    Done once on the module, so every unrolled step shares the one folded weight. Left to ONNX Runtime's
    optimiser (as in INT8 pre-processing), the fusion happens per Conv node: 20 steps, 20 copies of the weights.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model


def count_convs(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, nn.Conv2d))


def expected_conv_nodes(model: NeuralODECNN, method: str, n_steps: int) -> int:
    """Conv nodes of a faithful export: stem + head + (evaluations per step × N × convs in f)."""
    per_eval = count_convs(model.ode.func)
    return count_convs(model.stem) + count_convs(model.head) + EVALS_PER_STEP[method] * n_steps * per_eval


def describe(method: str, n_steps: int) -> str:
    return f"{method}×{n_steps}: {METHOD_DESCRIPTIONS[method]}, {EVALS_PER_STEP[method] * n_steps} evaluations of f"
