"""Unrolling: N explicit steps of the trained f, equal to an independent float64 integration; which
discretisation is deployed by default; the step sweep and the ODE-validity check."""

import copy

import numpy as np
import pytest
import torch

from edgenode.errors import ParityError, UsageError
from edgenode.export import onnx_export as ox
from edgenode.export.steps import SweepCriteria, check_ode_validity, choose_steps, sweep_steps
from edgenode.export.unroll import AUTO, MAX_STEPS, expected_conv_nodes, resolve_method, resolve_steps, unroll
from edgenode.model import ModelConfig, build_model, preset_config
from edgenode.ode.solvers import SolverConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up costs more than the work


# Butcher tableaux written out here, independently of edgenode.ode.solvers: (c, A, b).
TABLEAUX = {
    "euler": ([0.0], [[]], [1.0]),
    "midpoint": ([0.0, 0.5], [[], [0.5]], [0.0, 1.0]),
    "rk4": ([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    "rk4_38": ([0.0, 1 / 3, 2 / 3, 1.0], [[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]], [1 / 8, 3 / 8, 3 / 8, 1 / 8]),
}


def reference_logits(model, x, method, n_steps):
    """Float64 explicit Runge-Kutta from the tableau, calling the model's own f, stem and head."""
    ref = copy.deepcopy(model).double().eval()
    c, a, b = TABLEAUX[method]
    with torch.no_grad():
        h = ref.stem(x.double())
        dt = 1.0 / n_steps
        for i in range(n_steps):
            t = i * dt
            ks = []
            for j in range(len(b)):
                hj = h + dt * sum(a[j][m] * ks[m] for m in range(j)) if j else h
                ks.append(ref.ode.func(torch.tensor(t + c[j] * dt, dtype=torch.float64), hj))
            h = h + dt * sum(bj * k for bj, k in zip(b, ks))
        return ref.head(h)


def small_model(arch="odenet", seed=0, width=8):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, num_classes=5, width=width)).eval()


@pytest.mark.parametrize("arch", ["odenet", "paper", "faceode", "faceode-res"])
@pytest.mark.parametrize("method,n_steps", [("rk4", 1), ("rk4", 3), ("rk4_38", 2), ("euler", 4), ("midpoint", 2)])
def test_unrolled_model_equals_independent_float64_integration(arch, method, n_steps):
    model = small_model(arch)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = unroll(model, method, n_steps)(x).double()
    want = reference_logits(model, x, method, n_steps)
    rel = (got - want).norm() / want.norm()
    # float32 against float64: at most 2.5e-7 measured; the wrong 4-stage scheme gives 1.6e-6 to 7.1e-6 on `paper`
    assert rel <= 1e-6, f"{method}×{n_steps}: relative error {rel:.2e}"


def test_classic_rk4_and_torchdiffeq_rk4_differ():
    """The two RK4s are different schemes; the deployed one must be the one recorded."""
    model = small_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        classic, three_eighths = unroll(model, "rk4", 1)(x), unroll(model, "rk4_38", 1)(x)
    assert not torch.allclose(classic, three_eighths, atol=1e-7)


def test_unroll_shares_weights_and_leaves_source_model_alone():
    model = small_model()
    unrolled = unroll(model, "rk4", 4)
    assert unrolled.config.solver == SolverConfig(method="rk4", n_steps=4)
    assert model.config.solver.method == "dopri5"
    for (name, p), (_, q) in zip(model.state_dict().items(), unrolled.state_dict().items()):
        assert torch.equal(p, q), name
    assert not unrolled.training


@pytest.mark.parametrize("n_steps", [1, 3])
def test_exported_graph_holds_exactly_n_explicit_steps(n_steps):
    """Conv nodes = stem + head + 4·N·(convs in f): N explicit RK4 steps, no solver loop."""
    model = small_model(width=8)
    graph = ox.torch_to_onnx(unroll(model, "rk4", n_steps), image_size=32)
    ops = ox.op_counts(graph.proto)
    assert ops["Conv"] == expected_conv_nodes(model, "rk4", n_steps) == 3 + 4 * n_steps * 2
    assert not {"Loop", "If", "Scan"} & set(ops), "no control flow may remain"
    shared = [init.name for init in graph.proto.graph.initializer if "ode.func.conv1" in init.name]
    assert len(shared) == 2, "f's weights are stored once and shared by every step"


def test_export_leaves_the_callers_model_as_it_was(monkeypatch):
    """Export traces a float32 CPU copy in eval mode: the caller's model keeps its mode and dtype (parity's
    reference stays where it runs), and the traced module is not the caller's object."""
    model = unroll(small_model(width=8), "rk4", 1).double().train()
    traced = []
    for name, real in dict(ox.EXPORTERS).items():
        monkeypatch.setitem(ox.EXPORTERS, name, lambda m, sample, opset, real=real: (traced.append(m), real(m, sample, opset))[1])
    ox.torch_to_onnx(model, image_size=32)
    assert model.training and next(model.parameters()).dtype == torch.float64
    assert traced[0] is not model and not traced[0].training and next(traced[0].parameters()).dtype == torch.float32


def test_ctrl_c_inside_an_exporter_is_not_taken_for_its_failure(monkeypatch):
    """torch.onnx catches Ctrl-C inside its exporter and raises its own error: the fallback to the next exporter
    must not swallow it (the export went on, with the other exporter's graph)."""
    def interrupted(model, sample, opset):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("'NoneType' object has no attribute 'graph'")  # torch's own, raised while handling it

    tried = []
    monkeypatch.setitem(ox.EXPORTERS, "dynamo", lambda *args: (tried.append("dynamo"), interrupted(*args)))
    monkeypatch.setitem(ox.EXPORTERS, "torchscript", lambda *args: tried.append("torchscript"))
    with pytest.raises(KeyboardInterrupt):
        ox.torch_to_onnx(unroll(small_model(width=8), "rk4", 1), image_size=32, opset=18)
    assert tried == ["dynamo"]


def test_default_discretisation():
    euler = SolverConfig(method="euler", n_steps=20)
    adaptive = SolverConfig(method="dopri5")
    assert resolve_method(euler, None) == "euler" and resolve_steps(euler, "euler", None) == 20
    assert resolve_method(adaptive, None) == "rk4" and resolve_steps(adaptive, "rk4", None) == AUTO
    assert resolve_steps(euler, "rk4", None) == AUTO, "another method is another discretisation"
    assert resolve_steps(euler, "euler", 5) == 5
    with pytest.raises(UsageError, match="--method 'dopri5'"):
        resolve_method(adaptive, "dopri5")
    with pytest.raises(UsageError, match="-2"):
        resolve_steps(adaptive, "rk4", -2)


def test_steps_are_bounded_by_what_an_unrolled_graph_may_hold():
    """N copies of the ODE function end up in the graph: 100000 steps ran for minutes and wrote nothing."""
    adaptive = SolverConfig(method="dopri5")
    assert resolve_steps(adaptive, "rk4", MAX_STEPS) == MAX_STEPS == 256
    with pytest.raises(UsageError, match="--steps 257 is out of range: an unrolled graph holds 1 to 256 steps"):
        resolve_steps(adaptive, "rk4", 257)
    with pytest.raises(UsageError, match="--steps 100000"):
        unroll(small_model(), "rk4", 100_000)
    # a fixed-step checkpoint trained finer than that is named as the checkpoint's, not as a --steps never passed
    fine = SolverConfig(method="euler", n_steps=300)
    with pytest.raises(UsageError, match="the checkpoint was trained with euler × 300 steps: out of range for export, an unrolled graph holds 1 to 256"):
        resolve_steps(fine, "euler", None)
    assert resolve_steps(fine, "euler", 8) == 8 and resolve_steps(fine, "rk4", None) == AUTO


def _images(n=12, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def test_sweep_picks_a_small_n_on_a_smooth_model():
    model = small_model()
    images = _images()
    with torch.no_grad():
        labels = model(images).argmax(1).numpy()
    sweep = sweep_steps(model, images, labels, "rk4", candidates=(1, 2, 4, 8))
    assert sweep.chosen is not None and sweep.chosen <= 4
    diffs = [r.max_abs_logit_diff for r in sweep.rows]
    assert diffs[-1] < diffs[0], "finer steps get closer to the reference"
    assert [r.nfe for r in sweep.rows] == [4, 8, 16, 32]
    assert "| N | NFE |" in sweep.to_markdown()


def test_the_sweeps_reference_is_solved_in_float64_and_the_candidates_in_float32(monkeypatch):
    """steps_sweep.json says its dopri5 reference is float64: at 1e-6 a float32 solve's own rounding would be part
    of what the candidates are measured against."""
    from edgenode.export import steps as steps_module

    seen = []
    real = steps_module.solve_logits
    monkeypatch.setattr(steps_module, "solve_logits",
                        lambda model, solver, images, dtype: seen.append((solver.method, dtype)) or real(model, solver, images, dtype))
    model = small_model()
    images = _images()
    with torch.no_grad():
        labels = model(images).argmax(1).numpy()
    sweep_steps(model, images, labels, "rk4", candidates=(1, 2))
    assert seen == [("dopri5", torch.float64), ("rk4", torch.float32), ("rk4", torch.float32)]


def test_sweep_applies_both_the_agreement_and_the_accuracy_criterion(monkeypatch):
    """N = 1 flips one of 20 predictions, to a wrong class: 95 % agreement and 5 pt of accuracy lost. Either
    criterion alone must refuse it; N = 2 reproduces the reference and qualifies."""
    import edgenode.export.steps as steps

    reference = np.tile(np.eye(4), (5, 1))
    labels = reference.argmax(1)
    flipped = reference.copy()
    flipped[0] = np.roll(flipped[0], 1)

    def solve(model, solver, images, dtype):
        return (reference if solver.is_adaptive or solver.n_steps > 1 else flipped), 8

    monkeypatch.setattr(steps, "solve_logits", solve)
    images = torch.zeros(20, 3, 8, 8)
    for criteria in (SweepCriteria(min_agreement=0.9, max_accuracy_gap=0.01),  # the accuracy gap refuses N = 1
                     SweepCriteria(min_agreement=0.99, max_accuracy_gap=1.0)):  # the agreement refuses N = 1
        sweep = sweep_steps(small_model(), images, labels, "rk4", candidates=(1, 2), criteria=criteria)
        assert [r.qualifies for r in sweep.rows] == [False, True] and sweep.chosen == 2
        assert sweep.rows[0].agreement == pytest.approx(0.95) and sweep.rows[0].accuracy == pytest.approx(0.95)
    lenient = sweep_steps(small_model(), images, labels, "rk4", candidates=(1, 2),
                          criteria=SweepCriteria(min_agreement=0.9, max_accuracy_gap=0.06))
    assert lenient.chosen == 1, "N = 1 qualifies once both criteria allow it"


def test_sweep_refuses_when_nothing_qualifies(tmp_path):
    model = small_model()
    images = _images(6)
    sweep = sweep_steps(model, images, np.zeros(6, dtype=np.int64), "rk4", candidates=(1, 2),
                        criteria=SweepCriteria(max_logit_diff=1e-12))
    assert sweep.chosen is None
    with pytest.raises(ParityError) as info:
        choose_steps(sweep, tmp_path)
    assert "no rk4 step count" in str(info.value) and "--steps N" in info.value.hint


def test_sweep_criteria_are_validated():
    with pytest.raises(UsageError, match="1.5"):
        SweepCriteria(min_agreement=1.5)
    with pytest.raises(UsageError, match="-0.1"):
        SweepCriteria(max_accuracy_gap=-0.1)


def test_validity_accepts_a_smooth_model_and_flags_a_stiff_one():
    images = _images(8)
    smooth = small_model()
    with torch.no_grad():
        labels = smooth(images).argmax(1).numpy()
    heard = []  # export prints each solve as it finishes: the tight dopri5 rungs take minutes on a CPU
    ok = check_ode_validity(smooth, images, labels, "rk4", 2, tolerances=(1e-3, 1e-5),
                            on_rung=lambda rung, seconds: heard.append((rung, seconds)))
    assert ok.converged, ok.reasons
    assert [rung for rung, _ in heard] == [*ok.fixed, *ok.adaptive] and len(heard) == 5

    stiff = small_model(seed=1)
    with torch.no_grad():  # f with a huge Lipschitz constant: one Euler step is nowhere near the ODE's flow
        stiff.ode.func.conv2.conv.weight.mul_(40.0)
    bad = check_ode_validity(stiff, images, labels, "euler", 1, tolerances=(1e-3, 1e-5))
    assert not bad.converged
    assert bad.reasons and bad.to_dict()["ode_valid"] is False
    assert "ODE validity" in bad.summary()


def test_validity_names_the_finer_step_count_that_solves_the_ode(monkeypatch):
    """N disagrees with the exact solve on 1 image in 20, 2N on none: the check says to deploy 2N."""
    from edgenode.export import steps as steps_module

    exact = np.tile(np.eye(4), (5, 1))  # 20 images, argmax cycling through 4 classes
    coarse = exact.copy()
    coarse[0] = [0.0, 2.0, 0.0, 0.0]  # one answer of 20 flips at N
    labels = exact.argmax(1)

    def fake_ladder(model, solvers, images, labels_, on_rung=None):
        logits = [coarse, exact, exact] if solvers[0].method == "rk4" else [exact, exact, exact]
        return [steps_module.Rung(s.describe(), 1, steps_module.accuracy(x, labels_), None) for s, x in zip(solvers, logits)], logits

    monkeypatch.setattr(steps_module, "_ladder", fake_ladder)
    validity = check_ode_validity(None, None, labels, "rk4", 2, tolerances=(1e-3, 1e-5, 1e-7), max_accuracy_spread=1.0)
    assert not validity.converged and validity.deployed_agreement == 0.95
    assert (validity.suggested_steps, validity.suggested_agreement) == (4, 1.0)
    assert validity.to_dict()["suggested_steps"] == 4
    strict = check_ode_validity(None, None, labels, "rk4", 2, tolerances=(1e-3, 1e-5, 1e-7), max_accuracy_spread=0.0)
    assert len(strict.reasons) == 2 and strict.suggested_steps is None, "no advice when the ODE itself is in doubt"
    # 2N = 400 steps: more than export unrolls (MAX_STEPS 256), so no "--steps 400" that export would refuse
    assert check_ode_validity(None, None, labels, "rk4", 200, tolerances=(1e-3, 1e-5, 1e-7),
                              max_accuracy_spread=1.0).suggested_steps is None


def test_batchnorm_is_folded_once_so_every_step_shares_the_weights():
    torch.manual_seed(0)
    model = build_model(preset_config("paper", num_classes=5, width=8)).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    unrolled = unroll(model, "euler", 5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in unrolled.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the source model must stay untouched"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.with_solver(SolverConfig("euler", n_steps=5)).eval()(x)
        torch.testing.assert_close(unrolled(x), expected, rtol=1e-4, atol=1e-5)
