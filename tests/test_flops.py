"""FLOP counting, checked against hand-computed layers and a whole tiny model (what is counted: conv/linear
layers, 2 × MACs + bias adds; see edgenode/bench/flops.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgenode.bench.flops import config_flops, count_layers, model_flops, onnx_graph_flops
from edgenode.model import ModelConfig, build_model
from edgenode.ode.solvers import SolverConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up costs more than the work


def test_conv_layer_by_hand():
    """Conv2d(3→8, 3×3, stride 1, pad 1) on 16×16: 2·8·3·9·256 FLOPs for the MACs + 8·256 bias adds."""
    conv = nn.Conv2d(3, 8, 3, stride=1, padding=1)
    layers, out = count_layers(conv, lambda: conv(torch.zeros(1, 3, 16, 16)))
    assert out.shape == (1, 8, 16, 16)
    (layer,) = layers
    assert layer.macs == 8 * 3 * 9 * 256
    assert layer.bias_adds == 8 * 256
    assert layer.flops == 2 * 8 * 3 * 9 * 256 + 8 * 256 == 112_640

    no_bias = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    (layer,), _ = count_layers(no_bias, lambda: no_bias(torch.zeros(1, 3, 16, 16)))
    assert layer.flops == 2 * 8 * 3 * 9 * 256 == 110_592


def test_strided_grouped_conv_and_linear_by_hand():
    strided = nn.Conv2d(8, 8, 4, stride=2, padding=1)  # 16×16 → 8×8
    (layer,), _ = count_layers(strided, lambda: strided(torch.zeros(1, 8, 16, 16)))
    assert layer.flops == 2 * 8 * 8 * 16 * 64 + 8 * 64

    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)  # each output sees 8/4 = 2 input channels
    (layer,), _ = count_layers(grouped, lambda: grouped(torch.zeros(1, 8, 16, 16)))
    assert layer.flops == 2 * 8 * 2 * 9 * 256 + 8 * 256

    linear = nn.Linear(16, 6)
    (layer,), _ = count_layers(linear, lambda: linear(torch.zeros(1, 16)))
    assert layer.flops == 2 * 16 * 6 + 6


def test_counting_refuses_a_batch_other_than_one():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with pytest.raises(ValueError, match="batch of one"):
        count_layers(conv, lambda: conv(torch.zeros(2, 3, 16, 16)))


def tiny_odenet() -> nn.Module:
    return build_model(ModelConfig(arch="odenet", num_classes=3, width=8, solver=SolverConfig("rk4", n_steps=2)))


# The tiny odenet (width 8, 3 classes) on 16×16 images, by hand:
STEM = (2 * 8 * 3 * 9 * 16 * 16 + 8 * 16 * 16     # conv 3→8, 3×3, pad 1: 16×16 out
        + 2 * 8 * 8 * 16 * 8 * 8 + 8 * 8 * 8      # conv 8→8, 4×4, stride 2: 8×8 out
        + 2 * 8 * 8 * 16 * 4 * 4 + 8 * 4 * 4)     # conv 8→8, 4×4, stride 2: 4×4 out
F_EVAL = 2 * (2 * 8 * 9 * 9 * 4 * 4 + 8 * 4 * 4)  # two ConcatConv2d: (8 + 1 time channel) → 8, 3×3 on 4×4
HEAD = 2 * 8 * 3 + 3                              # linear 8 → 3


def test_whole_tiny_model_by_hand():
    counted = model_flops(tiny_odenet(), 16)
    assert (counted.stem, counted.f_eval, counted.head) == (STEM, F_EVAL, HEAD)
    assert counted.state_shape == (8, 4, 4)
    assert counted.per_step("rk4") == 4 * F_EVAL
    assert counted.total(8) == STEM + 8 * F_EVAL + HEAD == 610_995  # RK4 × 2 steps: 8 evaluations of f
    assert counted.for_solver(SolverConfig("rk4", n_steps=2)) == counted.total(8)
    assert counted.for_solver(SolverConfig("euler", n_steps=5)) == counted.total(5)
    assert counted.for_solver(SolverConfig("dopri5")) is None  # adaptive: needs the measured NFE
    assert counted.for_solver(SolverConfig("dopri5"), nfe=26) == STEM + 26 * F_EVAL + HEAD


def test_adaptive_total_uses_the_measured_nfe():
    model = tiny_odenet().with_solver(SolverConfig("dopri5", rtol=1e-3, atol=1e-3)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16))
    assert model.nfe > 0
    counted = model_flops(model, 16)
    assert counted.for_solver(model.config.solver, model.nfe) == STEM + model.nfe * F_EVAL + HEAD


def test_paper_preset_counts_only_convs_and_linear():
    """BatchNorm and ReLU are not counted; the stem is 3→2→4→8 channels (width 8)."""
    config = ModelConfig(arch="paper", num_classes=4, width=8, solver=SolverConfig("euler", n_steps=3))
    counted = config_flops(config, 16)
    stem = (2 * 2 * 3 * 9 * 256 + 2 * 256) + (2 * 4 * 2 * 9 * 64 + 4 * 64) + (2 * 8 * 4 * 9 * 16 + 8 * 16)
    f_eval = 2 * (2 * 8 * 8 * 9 * 16 + 8 * 16)
    assert (counted.stem, counted.f_eval, counted.head) == (stem, f_eval, 2 * 8 * 4 + 4)
    assert counted.for_solver(config.solver) == stem + 3 * f_eval + 2 * 8 * 4 + 4


def test_onnx_graph_count_matches_the_module_count(tmp_path):
    model = tiny_odenet().eval()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 16, 16),), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    counted = onnx_graph_flops(path)
    assert counted["unknown_nodes"] == []
    assert counted["nodes"]["Conv"] == 3 + 2 * 8  # stem + 2 convs × 8 evaluations
    assert counted["flops"] == STEM + 8 * F_EVAL + HEAD
    assert onnx_graph_flops(path, batch=4)["flops"] == 4 * (STEM + 8 * F_EVAL + HEAD)


def test_the_flop_cache_tells_widths_apart():
    narrow = ModelConfig(arch="paper", num_classes=4, width=8, solver=SolverConfig("euler", n_steps=3))
    wide = ModelConfig(arch="paper", num_classes=4, width=16, solver=SolverConfig("euler", n_steps=3))
    assert config_flops(narrow, 16).f_eval != config_flops(wide, 16).f_eval
    assert config_flops(wide, 16).f_eval == model_flops(build_model(wide), 16).f_eval


def test_a_linear_layer_without_bias_has_no_bias_adds():
    """Linear(16 → 6, bias=False): 2·16·6 FLOPs and nothing for a bias it does not have."""
    linear = nn.Linear(16, 6, bias=False)
    (layer,), _ = count_layers(linear, lambda: linear(torch.zeros(1, 16)))
    assert layer.bias_adds == 0 and layer.flops == 2 * 16 * 6


def test_a_step_costs_the_evaluations_of_its_method():
    """One step is EVALS_PER_STEP[method] evaluations of f: 1 for Euler, 4 for RK4."""
    counted = config_flops(ModelConfig(arch="odenet", num_classes=3, width=8, solver=SolverConfig("euler", n_steps=3)), 16)
    assert counted.per_step("euler") == counted.f_eval
    assert counted.per_step("rk4") == 4 * counted.f_eval


def test_the_flop_cache_tells_image_sizes_apart():
    """The state grows with the picture: one config counted at 16 px and at 32 px gives two counts, each as built."""
    config = ModelConfig(arch="odenet", num_classes=3, width=8, solver=SolverConfig("rk4", n_steps=2))
    small, large = config_flops(config, 16), config_flops(config, 32)
    assert small.image_size == 16 and large.image_size == 32
    assert large.f_eval == 4 * small.f_eval  # 4×4 state → 8×8 state
    assert large.f_eval == model_flops(build_model(config), 32).f_eval


def test_counting_leaves_the_model_in_the_mode_it_was_in():
    """model_flops counts in eval mode, then hands a model that was training back still training."""
    model = build_model(ModelConfig(arch="odenet", num_classes=3, width=8, solver=SolverConfig("rk4", n_steps=2)))
    model.train()
    model_flops(model, 16)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    model_flops(model, 16)
    assert not model.training


def test_a_gemm_with_transposed_first_input_counts_its_inner_dimension():
    """Gemm(A, B) with transA=1 and A stored [K, M]: K = A's first dimension, so 2·M·N·K FLOPs (+ M·N bias adds)."""
    from onnx import TensorProto, helper, numpy_helper

    k, m, n = 12, 1, 5  # A is [K, M] = [12, 1]: the batch-1 input read transposed
    b = numpy_helper.from_array(np.zeros((k, n), np.float32), "b")
    c = numpy_helper.from_array(np.zeros((n,), np.float32), "c")
    graph = helper.make_graph([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1)], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [k, m])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [b, c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    counted = onnx_graph_flops(model)
    assert counted["unknown_nodes"] == [] and counted["nodes"]["Gemm"] == 1
    assert counted["flops"] == 2 * m * n * k + m * n
