"""Where a graph goes numerically wrong: the float16 and quantizer limits exactly as documented, the logits path
through a quotient, which problem the logits report, and which images an inf/NaN is diagnosed on."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgenode.errors import NumericError
from edgenode.export import numerics


def _model(nodes, inits, dtype=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("logits", dtype, [None, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _half_doubler():
    """x -> Cast(float16) -> Mul(2) -> Cast(float) -> logits."""
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="to_half"),
             helper.make_node("Mul", ["h", "k"], ["big"], name="grow"),
             helper.make_node("Cast", ["big"], ["logits"], to=TensorProto.FLOAT, name="to_float")]
    return _model(nodes, [numpy_helper.from_array(np.array(2.0, np.float16), "k")])


def test_a_float16_value_of_exactly_2_to_the_15_is_saturated():
    """The headroom is |x| >= 2**15: 16384 doubled is 32768, saturated; 16376 doubled (32752, the float16 value below it) is not."""
    model = _half_doubler()
    scan = numerics.scan_numerics(model, np.full((2, 3), 16384.0, np.float32))
    assert [(p.node, p.kind) for p in scan.problems] == [("grow", "saturated")]
    assert not numerics.scan_numerics(model, np.full((2, 3), 16376.0, np.float32)).problems


def test_saturation_is_only_looked_for_when_asked():
    """FP32 checks pass saturation=False: finite logits are then accepted without a scan, even from a graph whose
    float16 tensors would be saturated; with saturation the same logits fail."""
    model = _half_doubler()
    x = np.full((2, 3), 20000.0, np.float32)  # 40000 in float16: finite, above 2**15
    logits = _run(model, x)
    assert np.isfinite(logits).all()
    verdict = numerics.diagnose_logits(model, logits, x, saturation=False)
    assert verdict and verdict.failure is None and verdict.warning is None
    assert "logits saturated at node 'grow'" in numerics.diagnose_logits(model, logits, x).failure


def _quant_dequant(scale: float, zero=None):
    """x -> QuantizeLinear(scale[, zero]) -> DequantizeLinear -> logits (no zero point: the ONNX default, uint8 0)."""
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale])]
    inputs = ["x", "s"]
    if zero is not None:
        inits.append(helper.make_tensor("z", TensorProto.UINT8, [], [zero]))
        inputs.append("z")
    nodes = [helper.make_node("QuantizeLinear", inputs, ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", *inputs[1:]], ["logits"], name="dequant")]
    return _model(nodes, inits)


def test_a_value_within_half_a_step_of_the_range_rounds_in_and_is_not_clipped():
    """Scale 0.01, zero point 128: the top code 127 stands for 1.27, and 1.274 rounds to it: not clipped. 1.29 is."""
    model = _quant_dequant(0.01, 128)
    inside = np.full((4, 3), 1.274, np.float32)
    assert not numerics.scan_numerics(model, inside).problems
    np.testing.assert_allclose(_run(model, inside), 1.27, rtol=1e-6)
    (problem,) = numerics.scan_numerics(model, np.full((4, 3), 1.29, np.float32)).problems
    assert (problem.node, problem.kind) == ("quant", "saturated") and "clips 100.0%" in problem.detail


def test_a_quantizer_without_zero_point_has_the_uint8_range():
    """ONNX's default zero point is uint8 0: the range is [0, 255·scale], so 0.1..2.5 at scale 0.01 fits and a
    negative input clips."""
    model = _quant_dequant(0.01)
    x = np.linspace(0.1, 2.5, 12, dtype=np.float32).reshape(4, 3)
    assert not numerics.scan_numerics(model, x).problems
    np.testing.assert_allclose(_run(model, x), x, atol=0.006)
    (problem,) = numerics.scan_numerics(model, -x).problems
    assert problem.kind == "saturated" and "[0, 2.55]" in problem.detail


def _cosines_then_divide(divide_by_constant: bool):
    """x -> MatMul -> Q/DQ (clips most values) -> Div -> logits: cosines over a constant, or a constant over them."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["cos"], name="matmul"),
             helper.make_node("QuantizeLinear", ["cos", "s", "z"], ["cos_q"], name="cos_quant"),
             helper.make_node("DequantizeLinear", ["cos_q", "s", "z"], ["cos_dq"], name="cos_dequant"),
             helper.make_node("Div", ["cos_dq", "k"] if divide_by_constant else ["k", "cos_dq"], ["logits"], name="div")]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel() * 0.9),
             helper.make_tensor("s", TensorProto.FLOAT, [], [1e-3]),
             helper.make_tensor("z", TensorProto.UINT8, [], [128]),
             helper.make_tensor("k", TensorProto.FLOAT, [], [0.5])]
    return _model(nodes, inits)


def test_a_quotient_by_a_constant_is_on_the_logits_path_but_a_constant_over_the_tensor_is_not():
    """cos / k clips where cos clips, so the quantizer saturates the logits; k / cos is another computation: the
    clipping quantizer behind it is an inner-tensor warning, not a failure of the logits."""
    x = np.random.default_rng(0).uniform(0.5, 1.0, size=(8, 3)).astype(np.float32)  # cosines 0.45..0.9, ±0.128 range
    by_constant = _cosines_then_divide(True)
    with pytest.raises(NumericError, match="logits saturated at node 'cos_quant'"):
        numerics.check_logits(by_constant, _run(by_constant, x), x, "test model", "eight images", precision="int8")
    over_constant = _cosines_then_divide(False)
    logits = _run(over_constant, x)
    assert np.isfinite(logits).all()
    warning = numerics.check_logits(over_constant, logits, x, "test model", "eight images", precision="int8")
    assert warning is not None and "cos_quant" in warning and "the logits are not saturated" in warning


def test_the_logits_report_inf_or_nan_before_saturation():
    """Of the problems on the logits path, an inf/NaN is the one reported, even when a saturated node comes first."""
    saturated = numerics.NodeProblem(1, "grow", "Mul", "big", "saturated", "max |x| 40000")
    broken = numerics.NodeProblem(3, "to_half", "Cast", "h", "inf/NaN", "3 of 3 values are inf/NaN")
    inner = numerics.NodeProblem(0, "first", "Mul", "a", "inf/NaN", "1 of 3 values are inf/NaN")
    scan = numerics.NumericScan(images=1, problems=[inner, saturated, broken], logits_path=frozenset({1, 3}))
    assert scan.logits_problem is broken
    assert numerics.NumericScan(1, [inner, saturated], frozenset({1, 3})).logits_problem is saturated
    assert numerics.NumericScan(1, [inner], frozenset({1, 3})).logits_problem is None


def test_inf_logits_are_diagnosed_on_the_images_that_give_them():
    """Nine images are fine and the tenth overflows: the scan runs on the tenth and names where it starts."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="first_mul"),
             helper.make_node("Mul", ["a", "k"], ["b"], name="second_mul"),
             helper.make_node("Sub", ["b", "b"], ["logits"], name="sub")]
    model = _model(nodes, [helper.make_tensor("k", TensorProto.FLOAT, [], [1e30])])
    x = np.zeros((10, 3), np.float32)
    x[9] = 1.0  # 1e30 · 1e30 overflows; 0 stays 0
    logits = _run(model, x)
    assert np.isfinite(logits[:9]).all() and np.isnan(logits[9]).all()
    with pytest.raises(NumericError, match=r"1 of 10 images give inf/NaN logits; it starts at node 'second_mul'"):
        numerics.check_logits(model, logits, x, "test model", "ten images")
