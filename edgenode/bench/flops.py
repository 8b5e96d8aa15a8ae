"""FLOPs per image of a NeuralODECNN, counted analytically — and exactly what is counted.

Counted (per image, i.e. for a batch of one):

* every ``nn.Conv2d`` (any ``_ConvNd``): ``2 · C_out · (C_in / groups) · k_h · k_w · H_out · W_out`` — one
  multiply and one add per multiply-accumulate (MAC) — plus ``C_out · H_out · W_out`` adds for the bias;
* every ``nn.Linear``: ``2 · in · out`` plus ``out`` bias adds;
* a cosine classifier: ``2 · in · classes`` (the product of the unit feature with the unit class vectors).

Not counted: normalisation (GroupNorm/BatchNorm, and the cosine classifier's unit lengths), ReLU, pooling,
the time channel's fill and concat, padding, and the solver's own arithmetic (an RK4 step's stage inputs and
weighted sum: about 10 element-wise operations on the state, < 1 % of a 3×3 conv on it). These are
memory-bound element-wise work that a "fraction of peak" should not be credited with; conv and linear layers
are where the arithmetic is.

The model is split the way it runs: ``stem`` once, the ODE function ``f`` once per evaluation, ``head`` once.
A fixed-step solve makes ``evals_per_step · n_steps`` evaluations (RK4: 4 per step); an adaptive solve makes
``nfe`` of them, measured (``model.nfe``) after a forward pass, so::

    total = stem + nfe · f + head        per RK4 step = 4 · f

A mirror-averaged model (``export --mirror-average``) runs each picture twice, as itself and mirrored, and
classifies the merged feature once: ``views = 2`` and everything but the final classifier layer doubles.

Layers are found by forward hooks on a batch-of-one pass, so any preset (and its ConcatConv2d time channel,
``C_in = width + 1``) is counted from what actually runs. :func:`onnx_graph_flops` counts the same way from an
ONNX graph (Conv, Gemm, MatMul nodes after shape inference at batch 1), as a cross-check of an artifact.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenode.model import CosineClassifier, ModelConfig, NeuralODECNN, build_model
from edgenode.ode.solvers import EVALS_PER_STEP, SolverConfig


@dataclass(frozen=True)
class LayerFlops:
    """One conv or linear layer of one pass, per image."""

    name: str
    kind: str  # conv | linear | cosine
    macs: int
    bias_adds: int
    output_shape: tuple[int, ...]  # without the batch dimension

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.bias_adds

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "macs": self.macs, "bias_adds": self.bias_adds,
                "flops": self.flops, "output_shape": list(self.output_shape)}


def conv_flops(module: nn.Module, output_shape: tuple[int, ...], name: str = "conv") -> LayerFlops:
    """A conv layer producing ``output_shape`` (C_out, *spatial), per image."""
    c_out, *spatial = output_shape
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    outputs = c_out * math.prod(spatial)
    return LayerFlops(name, "conv", outputs * per_output, outputs if module.bias is not None else 0, tuple(output_shape))


def linear_flops(module: nn.Linear, output_shape: tuple[int, ...], name: str = "linear") -> LayerFlops:
    """A linear layer producing ``output_shape`` (…, out) per image."""
    outputs = math.prod(output_shape)
    return LayerFlops(name, "linear", outputs * module.in_features, outputs if module.bias is not None else 0,
                      tuple(output_shape))


def cosine_flops(module: CosineClassifier, output_shape: tuple[int, ...], name: str = "cosine") -> LayerFlops:
    """A cosine classifier: one matrix product of the unit feature with the unit class vectors, per image."""
    return LayerFlops(name, "cosine", math.prod(output_shape) * module.in_features, 0, tuple(output_shape))


def count_layers(module: nn.Module, run) -> tuple[list[LayerFlops], Any]:
    """Run ``run()`` (a batch-of-one pass through ``module``) and count every conv/linear/cosine call it makes."""
    records: list[LayerFlops] = []
    names = {m: n or type(m).__name__ for n, m in module.named_modules()}

    def hook(mod, _inputs, output):
        shape = tuple(output.shape[1:])
        if output.shape[0] != 1:
            raise ValueError(f"FLOPs are counted on a batch of one, got a batch of {output.shape[0]}")
        if isinstance(mod, nn.Linear):
            records.append(linear_flops(mod, shape, names.get(mod, "linear")))
        elif isinstance(mod, CosineClassifier):
            records.append(cosine_flops(mod, shape, names.get(mod, "cosine")))
        else:
            records.append(conv_flops(mod, shape, names.get(mod, "conv")))

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, CosineClassifier, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            output = run()
    finally:
        for handle in handles:
            handle.remove()
    return records, output


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs per image of stem, one evaluation of f, and head (see the module docstring)."""

    image_size: int
    state_shape: tuple[int, ...]  # the ODE state of one image (C, H, W)
    stem: int
    f_eval: int
    head: int
    layers: dict[str, list[LayerFlops]] = field(default_factory=dict)
    views: int = 1  # passes of the network per picture: 2 when mirror-averaged
    classifier: int = 0  # of ``head``: the final layer, which a mirror-averaged model runs once on the merged feature

    def total(self, nfe: int) -> int:
        """Per image for a solve with ``nfe`` evaluations of f."""
        return self.views * (self.stem + nfe * self.f_eval + self.head - self.classifier) + self.classifier

    def per_step(self, method: str = "rk4") -> int:
        return EVALS_PER_STEP[method] * self.f_eval

    def for_solver(self, solver: SolverConfig, nfe: int | None = None) -> int | None:
        """Per image: fixed-step from the solver, adaptive from the measured ``nfe`` (None if unknown)."""
        evals = solver.fixed_nfe if not solver.is_adaptive else nfe
        return None if evals is None else self.total(evals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size, "state_shape": list(self.state_shape),
            "stem": self.stem, "f_eval": self.f_eval, "head": self.head, "per_rk4_step": self.per_step("rk4"),
            "views": self.views, "classifier": self.classifier,
            "counted": "conv, linear and cosine-classifier layers: 2 x MACs + bias adds; norms, activations, pooling and solver "
                       "arithmetic are not counted",
            "layers": {part: [layer.to_dict() for layer in rows] for part, rows in self.layers.items()},
        }


def model_flops(model: NeuralODECNN, image_size: int) -> ModelFlops:
    """Count a built model: stem on one image, f once on its state (t = 0), head on that state."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, image_size, image_size, dtype=next(model.parameters()).dtype,
                        device=next(model.parameters()).device)
        stem_layers, state = count_layers(model.stem, lambda: model.stem(x))
        t0 = torch.zeros((), dtype=state.dtype, device=state.device)
        f_layers, _ = count_layers(model.ode.func, lambda: model.ode.func(t0, state))
        head_layers, _ = count_layers(model.head, lambda: model.head(state))
    finally:
        model.train(was_training)
    return ModelFlops(
        image_size=image_size, state_shape=tuple(state.shape[1:]),
        stem=sum(layer.flops for layer in stem_layers), f_eval=sum(layer.flops for layer in f_layers),
        head=sum(layer.flops for layer in head_layers),
        layers={"stem": stem_layers, "f": f_layers, "head": head_layers},
        views=2 if getattr(model.config, "mirror_average", False) else 1,
        classifier=sum(layer.flops for layer in head_layers if layer.name == str(len(model.head) - 1)),
    )


_CACHE: dict[tuple, ModelFlops] = {}


def config_flops(config: ModelConfig | dict, image_size: int) -> ModelFlops:
    """:func:`model_flops` of a fresh model built from ``config`` (weights do not change FLOPs); cached."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    key = (config.arch, config.num_classes, config.width, config.dropout, config.mirror_average, image_size)
    if key not in _CACHE:
        _CACHE[key] = model_flops(build_model(config), image_size)
    return _CACHE[key]


# --- the same count from an ONNX graph ---------------------------------------------------------------------


def _dims(value_info) -> list[int] | None:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return dims


def onnx_graph_flops(source: str | os.PathLike | Any, batch: int = 1) -> dict[str, Any]:
    """Conv/Gemm/MatMul FLOPs of an ONNX graph for ``batch`` images (same rules as the module count).

    The batch dimension is pinned to ``batch`` and shapes are re-inferred; a node whose shapes stay unknown
    is listed in ``unknown_nodes`` and left out of ``flops`` (then the count is a lower bound).
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    proto = onnx.load(str(source), load_external_data=False) if isinstance(source, (str, os.PathLike, Path)) else source
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]  # symbolic shapes of the exporter; re-inferred at a concrete batch
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int] | None] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        shapes[value.name] = _dims(value)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in inferred.graph.node:  # Constant nodes carry their shape in the tensor attribute
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            shapes[node.output[0]] = list(numpy_helper.to_array(node.attribute[0].t).shape)

    total, counts, unknown = 0, {"Conv": 0, "Gemm": 0, "MatMul": 0}, []
    for node in inferred.graph.node:
        if node.op_type not in counts:
            continue
        counts[node.op_type] += 1
        out = shapes.get(node.output[0])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type == "Conv":
            weight = shapes.get(node.input[1])
            if not out or not weight:
                unknown.append(node.name or node.output[0])
                continue
            total += 2 * math.prod(out) * math.prod(weight[1:]) + (math.prod(out) if has_bias else 0)
        else:
            a = shapes.get(node.input[0])
            if not out or not a:
                unknown.append(node.name or node.output[0])
                continue
            if node.op_type == "Gemm":
                trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
                k = a[0] if trans_a else a[1]
            else:
                k = a[-1]
            total += 2 * math.prod(out) * k + (math.prod(out) if has_bias else 0)
    return {"batch": batch, "flops": total, "nodes": counts, "unknown_nodes": unknown}
