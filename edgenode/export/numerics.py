"""Where a graph goes numerically wrong: the first node whose output is inf/NaN or saturated.

ONNX Runtime returns graph outputs only, so :func:`scan_numerics` runs an in-memory copy of the model in
which every node output is also a graph output, reduces each intermediate tensor batch by batch to a few
numbers (how many values are inf/NaN, the largest |x|, how many a quantizer clips) and walks the nodes in
graph order (ONNX keeps ``graph.node`` topologically sorted), so the first node reported is where the
trouble starts, not where it is noticed.

What counts as a problem, per tensor:

``inf/NaN``
    any non-finite value (and any non-finite value in a float initializer, reported at its first consumer).
``saturated``
    a float16 tensor with |x| >= ``HALF_HEADROOM`` = 2**15: less than a factor 2 below float16's largest
    finite value (65504), so a slightly different input overflows; or a QuantizeLinear that clips more
    than ``CLIP_FRACTION`` of its input's elements at the ends of its INT8/UINT8 range (a calibration range
    that is too narrow for the data).

"Logits saturated" means such a problem on the logits path: the node that computes the logits and the
Cast/QuantizeLinear/DequantizeLinear nodes (and products with a constant) between it and the ``logits`` output.
:func:`check_logits` is what export and parity call: it fails (NumericError) when the logits hold inf/NaN or are
saturated, and names the first node where it starts.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenode.errors import NumericError

HALF_HEADROOM = 2.0**15
CLIP_FRACTION = 0.10
SCAN_BATCH = 4  # images per scan call: every intermediate tensor of a batch is held at once
PROBE_IMAGES = 32  # images the saturation scan runs on (spread evenly over what it is given)
_PASSIVE_OPS = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_QUANT_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
                 np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535)}


@dataclass(frozen=True)
class NodeProblem:
    """One node's first numeric problem: ``kind`` is ``inf/NaN`` or ``saturated``; ``detail`` says by how much."""

    index: int  # position of the node in the graph (topological order)
    node: str
    op_type: str
    tensor: str
    kind: str
    detail: str

    def describe(self) -> str:
        return f"node {self.node!r} ({self.op_type}, output {self.tensor!r}): {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "node": self.node, "op_type": self.op_type, "tensor": self.tensor,
                "kind": self.kind, "detail": self.detail}


@dataclass
class NumericScan:
    """The problems found, first per node in graph order, and which of them sit on the logits path."""

    images: int
    problems: list[NodeProblem] = field(default_factory=list)
    logits_path: frozenset[int] = frozenset()  # node indices from the last compute node to the logits

    def first(self, kind: str | None = None) -> NodeProblem | None:
        return next((p for p in self.problems if kind is None or p.kind == kind), None)

    @property
    def logits_problem(self) -> NodeProblem | None:
        """The problem that reaches the logits, if any (inf/NaN first, then saturation)."""
        on_path = [p for p in self.problems if p.index in self.logits_path]
        return next((p for p in on_path if p.kind == "inf/NaN"), None) or (on_path[0] if on_path else None)


@dataclass
class _Stats:
    count: int = 0
    nonfinite: int = 0
    max_abs: float = 0.0
    clipped: int = 0
    dtype: Any = None

    def add(self, x: np.ndarray) -> None:
        self.dtype = x.dtype
        self.count += x.size
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        self.nonfinite += bad
        values = np.abs(x[finite]) if bad else np.abs(x)
        if values.size:
            self.max_abs = max(self.max_abs, float(values.max()))


def _load(model) -> "onnx.ModelProto":  # noqa: F821
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model))
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return model


def _constants(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _quantizer_range(node, constants: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(low, high, half step) in float of a QuantizeLinear with per-tensor scale; None when it cannot be read."""
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None or np.size(scale) != 1:
        return None  # per-channel activation scales do not occur in these graphs; skip rather than guess
    zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if zero is None or zero.dtype not in _QUANT_RANGES:
        return None
    qmin, qmax = _QUANT_RANGES[zero.dtype]
    s, z = float(np.asarray(scale).reshape(())), float(np.asarray(zero).reshape(()))
    return np.float64((qmin - z) * s), np.float64((qmax - z) * s), s / 2


def _logits_path(proto, output: str) -> frozenset[int]:
    """Indices of the nodes from the one that computes ``output`` through the passive ops after it.

    A product with (or a quotient by) a constant passes too: the cosine head's logits are its cosines times a
    learned scale, so a quantizer that clips the cosines clips the logits."""
    producer = {o: i for i, node in enumerate(proto.graph.node) for o in node.output}
    constant = _constant_tensors(proto)
    path, name = set(), output
    while name in producer:
        i = producer[name]
        path.add(i)
        node = proto.graph.node[i]
        if node.op_type in ("Mul", "Div") and len(node.input) == 2:
            varying = [n for n in node.input if n not in constant]
            if len(varying) != 1 or (node.op_type == "Div" and varying[0] != node.input[0]):
                break
            name = varying[0]
            continue
        if node.op_type not in _PASSIVE_OPS or not node.input:
            break
        name = node.input[0]
    return frozenset(path)


def _constant_tensors(proto) -> set[str]:
    """Names of the tensors computed from initializers and Constant nodes alone (graph order is topological)."""
    constant = {init.name for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" or (node.input and all(not n or n in constant for n in node.input)):
            constant.update(node.output)
    return constant


def _node_name(node, index: int) -> str:
    return node.name or f"#{index} {node.op_type}"


def scan_numerics(model, images: np.ndarray, batch_size: int = SCAN_BATCH) -> NumericScan:
    """Run ``model`` (path, serialized bytes or ModelProto) on float32 NCHW ``images`` exposing every node
    output, and list each node's first problem (module docstring) in graph order."""
    import onnx
    import onnxruntime as ort

    proto = copy.deepcopy(_load(model))
    graph = proto.graph
    output_name = graph.output[0].name
    exposed = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.output:
            if name and name not in exposed:
                graph.output.append(onnx.ValueInfoProto(name=name))
                exposed.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    constants = _constants(proto)
    quantizers = {i: _quantizer_range(node, constants) for i, node in enumerate(graph.node) if node.op_type == "QuantizeLinear"}
    stats: dict[str, _Stats] = {}
    clipped = {i: [0, 0] for i in quantizers}  # node index -> [clipped elements, elements]
    images = np.ascontiguousarray(images, dtype=np.float32)
    for lo in range(0, len(images), batch_size):
        feed = images[lo : lo + batch_size]
        values = dict(zip(names, session.run(None, {input_name: feed})))
        values[input_name] = feed
        for name, value in values.items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and name not in constants:
                stats.setdefault(name, _Stats()).add(value)
        for i, limits in quantizers.items():
            x = values.get(graph.node[i].input[0])
            if limits is None or x is None or x.dtype.kind != "f":
                continue
            low, high, half = limits
            x64 = x.astype(np.float64, copy=False)
            clipped[i][0] += int(np.count_nonzero((x64 < low - half) | (x64 > high + half)))
            clipped[i][1] += x.size
        del values

    scan = NumericScan(images=len(images), logits_path=_logits_path(proto, output_name))
    bad_constants = {name: value for name, value in constants.items()
                     if value.dtype.kind == "f" and not np.isfinite(value).all()}
    for i, node in enumerate(graph.node):
        problem = _node_problem(i, node, stats, clipped.get(i), quantizers.get(i), bad_constants)
        if problem is not None:
            scan.problems.append(problem)
    return scan


def _node_problem(i, node, stats, clip, limits, bad_constants) -> NodeProblem | None:
    name = _node_name(node, i)
    for source in node.input:
        if source in bad_constants:
            value = bad_constants[source]
            n = int(value.size - np.count_nonzero(np.isfinite(value)))
            return NodeProblem(i, name, node.op_type, node.output[0], "inf/NaN",
                               f"its constant input {source!r} holds {n} inf/NaN of {value.size} values")
    for tensor in node.output:
        s = stats.get(tensor)
        if s is not None and s.nonfinite:
            return NodeProblem(i, name, node.op_type, tensor, "inf/NaN", f"{s.nonfinite} of {s.count} values are inf/NaN")
    for tensor in node.output:
        s = stats.get(tensor)
        if s is not None and s.dtype == np.float16 and s.max_abs >= HALF_HEADROOM:
            return NodeProblem(i, name, node.op_type, tensor, "saturated",
                               f"max |x| {s.max_abs:.6g} in float16, within 2x of its largest value 65504")
    if clip is not None and clip[1] and clip[0] / clip[1] > CLIP_FRACTION:
        low, high, _ = limits
        return NodeProblem(i, name, node.op_type, node.output[0], "saturated",
                           f"clips {clip[0] / clip[1]:.1%} of {node.input[0]!r} to its INT8 range "
                           f"[{float(low):.4g}, {float(high):.4g}] (more than {CLIP_FRACTION:.0%})")
    return None


def probe_indices(n: int, count: int = PROBE_IMAGES) -> np.ndarray:
    """``count`` of ``n`` images spread evenly (so over the classes of a class-ordered split)."""
    return np.unique(np.linspace(0, max(0, n - 1), num=min(count, n)).round().astype(np.int64)) if n else np.zeros(0, np.int64)


@dataclass(frozen=True)
class LogitsVerdict:
    """``failure``: the logits hold inf/NaN or are saturated (and where it starts); ``warning``: a saturated
    tensor inside the graph that does not reach the logits on these images. ``bool`` is "no failure"."""

    failure: str | None = None
    warning: str | None = None

    def __bool__(self) -> bool:
        return self.failure is None


def diagnose_logits(model, logits: np.ndarray, images: np.ndarray, saturation: bool = True) -> LogitsVerdict:
    """Judge ``logits`` (the model's output on ``images``) and name the node where a problem starts.

    Non-finite logits are diagnosed on the images that produce them. With ``saturation`` (FP16 and INT8
    graphs) the graph is also scanned on up to ``PROBE_IMAGES`` images spread over ``images``.
    """
    logits = np.asarray(logits)
    images = np.asarray(images)
    bad_rows = np.flatnonzero(~np.isfinite(logits).all(axis=1)) if logits.ndim == 2 else np.zeros(0, np.int64)
    if bad_rows.size:
        scan = scan_numerics(model, images[bad_rows[: SCAN_BATCH * 2]])
        where = scan.first("inf/NaN") or scan.first()
        start = f"; it starts at {where.describe()}" if where else "; no intermediate tensor is inf/NaN on these images"
        return LogitsVerdict(failure=f"{bad_rows.size} of {len(logits)} images give inf/NaN logits{start}")
    if not saturation or not len(images):
        return LogitsVerdict()
    scan = scan_numerics(model, images[probe_indices(len(images))])
    first, problem = scan.first(), scan.logits_problem
    if problem is not None:
        start = f"; it starts at {first.describe()}" if first is not None and first.index != problem.index else ""
        return LogitsVerdict(failure=f"logits saturated at {problem.describe()}{start}")
    if first is not None:
        return LogitsVerdict(warning=f"{first.describe()} (the logits are not saturated on these images)")
    return LogitsVerdict()


HINTS = {
    "fp32": "the checkpoint's weights or activations are not finite; use another checkpoint or retrain",
    "fp16": "an activation overflows float16; export --precision fp32 or int8, or retrain with normalisation",
    "int8": "the calibration range does not fit the data; try another --calibration-method such as percentile, "
            "more --calibration-per-class, or --precision fp32/fp16",
}


def check_logits(model, logits: np.ndarray, images: np.ndarray, source: str, what: str, saturation: bool = True,
                 precision: str = "fp32") -> str | None:
    """Raise NumericError (one line naming the first bad node) when ``logits`` hold inf/NaN or are saturated;
    return the warning about a saturated inner tensor, if any."""
    verdict = diagnose_logits(model, logits, images, saturation)
    if verdict.failure is not None:
        raise NumericError(f"{source} on {what}: {verdict.failure}", HINTS.get(precision))
    return None if verdict.warning is None else f"{source} on {what}: {verdict.warning}"
