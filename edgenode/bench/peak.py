"""The machine's achievable FP32 peak, measured in the same run, with the same runtimes and threads.

A row's "fraction of peak" is its useful FLOP rate (:mod:`edgenode.bench.flops` × images/s) divided by what
this machine reaches on dense work of the same kind. We measure, each with ``threads`` intra-op threads
(the same number the ONNX Runtime sessions and torch use for the rows):

* ``onnxruntime conv``: a chain of ``depth`` 3×3 convs, C→C channels on the ODE state's S×S, at the bench's
  largest batch — the ODE function's own work, through the same ONNX Runtime session settings as the rows;
* ``onnxruntime matmul``: one ``n×n @ n×n`` MatMul (large: near the BLAS peak of the cores);
* ``torch conv`` and ``torch matmul``: the same shapes through torch (the runtime of the baseline rows).

Each is warmed up and repeated; its figure is the *fastest* repeat (``flops / best time``): what the machine
can achieve, not what it averaged. The CPU peak is the largest of these, so a row's fraction is never
flattered by a weak denominator. On a GPU the same is measured per dtype with torch (fp32 in IEEE float32,
TF32 off, as the rows run; fp16, bf16), timed with CUDA events.

The ONNX graphs are written at opset 17 with IR version 8, the pair ONNX Runtime has read since 1.13:
``onnx.helper.make_model`` would stamp the installed onnx package's newest IR version (onnx 1.23 writes 14), which
an older ONNX Runtime beside it refuses to load. An H200 session's 1.30 refused the graph in ``Model::Model``, where
ONNX Runtime checks the IR version (its message was cut before the reason; ``errors.first_line`` now keeps the end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgenode.bench.timing import measure, wall_ms
from edgenode.errors import UsageError, is_whole_number

PEAK_OPSET, PEAK_IR_VERSION = 17, 8


@dataclass(frozen=True)
class PeakConfig:
    """Shapes and repeats of the peak measurement (``channels``/``size``: the ODE state; batch: the rows')."""

    batch: int = 64
    channels: int = 64
    size: int = 16
    depth: int = 4
    matmul_size: int = 1024
    warmup: int = 2
    repeats: int = 5

    def __post_init__(self):
        for name in ("batch", "channels", "size", "depth", "matmul_size", "repeats"):
            value = getattr(self, name)
            if not is_whole_number(value):
                raise UsageError(f"peak measurement: {name} must be a positive whole number, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"peak measurement: warmup must be >= 0, got {self.warmup!r}")

    @property
    def conv_flops(self) -> int:
        """FLOPs of one call of the conv chain (2 × MACs + bias adds)."""
        outputs = self.batch * self.channels * self.size * self.size
        return self.depth * (2 * outputs * self.channels * 9 + outputs)

    @property
    def matmul_flops(self) -> int:
        return 2 * self.matmul_size**3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PeakMeasurement:
    name: str  # e.g. "onnxruntime conv"
    device: str  # cpu | cuda
    dtype: str  # fp32 | fp16 | bf16
    shape: str
    flops_per_call: int
    best_ms: float
    p50_ms: float
    threads: int | None = None

    @property
    def gflops(self) -> float:
        """Achievable rate: FLOPs of one call over its fastest repeat, in GFLOP/s."""
        return self.flops_per_call / (self.best_ms * 1e6) if self.best_ms > 0 else float("inf")

    @property
    def gflops_p50(self) -> float:
        return self.flops_per_call / (self.p50_ms * 1e6) if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gflops": self.gflops, "gflops_p50": self.gflops_p50}


@dataclass
class Peak:
    """Every measurement and, per (device, dtype), the best: the denominator of a row's fraction of peak."""

    config: PeakConfig
    measurements: list[PeakMeasurement] = field(default_factory=list)

    def best(self, device: str, dtype: str = "fp32") -> PeakMeasurement | None:
        found = [m for m in self.measurements if m.device == device and m.dtype == dtype]
        return max(found, key=lambda m: m.gflops) if found else None

    def flops_per_s(self, device: str, dtype: str = "fp32") -> float | None:
        best = self.best(device, dtype)
        return best.gflops * 1e9 if best else None

    def to_dict(self) -> dict[str, Any]:
        keys = sorted({(m.device, m.dtype) for m in self.measurements})
        return {
            "config": self.config.to_dict(),
            "measurements": [m.to_dict() for m in self.measurements],
            "peak": {f"{device}/{dtype}": {"gflops": self.best(device, dtype).gflops, "by": self.best(device, dtype).name}
                     for device, dtype in keys},
            "method": "fastest of the repeats of each kernel; peak = the largest over kernels (module edgenode.bench.peak)",
        }


def conv_chain_onnx(config: PeakConfig, seed: int = 0) -> bytes:
    """An ONNX graph of ``depth`` 3×3 C→C convs (pads 1, with bias) on [batch, C, S, S], serialized."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = config.channels
    nodes, inits = [], []
    current = "x"
    for i in range(config.depth):
        w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = np.zeros(c, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == config.depth - 1 else f"h{i}"
        nodes.append(helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [out], pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        current = out
    shape = ["batch", c, config.size, config.size]
    graph = helper.make_graph(nodes, "edgenode_peak_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return _serialized(graph)


def _serialized(graph) -> bytes:
    """``graph`` as a model at opset 17 and IR version 8 (see the module's docstring)."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", PEAK_OPSET)])
    model.ir_version = PEAK_IR_VERSION
    return model.SerializeToString()


def matmul_onnx(n: int, seed: int = 0) -> bytes:
    """An ONNX graph ``y = x @ W`` with ``x`` [n, n] fed at run time and ``W`` [n, n] a weight."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "edgenode_peak_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
                              [numpy_helper.from_array(w, "w")])
    return _serialized(graph)


def _ort_measure(model: bytes, x: np.ndarray, threads: int, config: PeakConfig) -> tuple[float, float]:
    from edgenode.runtime.onnx_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model, ["CPUExecutionProvider"], threads=threads)
    try:
        session, name = runner.session, runner.input_name
        stats = measure(wall_ms(lambda: session.run(None, {name: x})), 1, config.warmup, config.repeats)
    finally:
        runner.close()
    return stats.min_ms, stats.p50_ms


def measure_cpu_peak(config: PeakConfig, threads: int) -> list[PeakMeasurement]:
    """ONNX Runtime and torch conv-chain and matmul rates on the CPU with ``threads`` threads."""
    import torch

    rng = np.random.default_rng(1)
    c, s = config.channels, config.size
    conv_shape = f"{config.depth}× conv3x3 {c}→{c} on {s}×{s}, batch {config.batch}"
    mm_shape = f"matmul {config.matmul_size}×{config.matmul_size} @ {config.matmul_size}×{config.matmul_size}"
    x_conv = rng.standard_normal((config.batch, c, s, s)).astype(np.float32)
    x_mm = rng.standard_normal((config.matmul_size, config.matmul_size)).astype(np.float32)
    out: list[PeakMeasurement] = []

    best, p50 = _ort_measure(conv_chain_onnx(config), x_conv, threads, config)
    out.append(PeakMeasurement("onnxruntime conv", "cpu", "fp32", conv_shape, config.conv_flops, best, p50, threads))
    best, p50 = _ort_measure(matmul_onnx(config.matmul_size), x_mm, threads, config)
    out.append(PeakMeasurement("onnxruntime matmul", "cpu", "fp32", mm_shape, config.matmul_flops, best, p50, threads))

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        weights = [torch.randn(c, c, 3, 3) / (9 * c) ** 0.5 for _ in range(config.depth)]
        bias = torch.zeros(c)
        xt = torch.from_numpy(x_conv)

        def conv_chain():
            h = xt
            for w in weights:
                h = torch.nn.functional.conv2d(h, w, bias, padding=1)
            return h

        a = torch.from_numpy(x_mm)
        b = torch.randn(config.matmul_size, config.matmul_size)
        with torch.inference_mode():
            stats = measure(wall_ms(conv_chain), 1, config.warmup, config.repeats)
            out.append(PeakMeasurement("torch conv", "cpu", "fp32", conv_shape, config.conv_flops, stats.min_ms, stats.p50_ms, threads))
            stats = measure(wall_ms(lambda: torch.mm(a, b)), 1, config.warmup, config.repeats)
            out.append(PeakMeasurement("torch matmul", "cpu", "fp32", mm_shape, config.matmul_flops, stats.min_ms, stats.p50_ms, threads))
    finally:
        torch.set_num_threads(previous)
    return out


def measure_cuda_peak(config: PeakConfig, dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16"),
                      matmul_size: int = 4096) -> list[PeakMeasurement]:
    """torch conv-chain and matmul rates on the current CUDA device, per dtype (CUDA-event timing).

    Only called when ``torch.cuda.is_available()``; the CPU path never reaches it.
    """
    import torch

    from edgenode.bench.gpu import TORCH_DTYPES, cuda_timed, float32_as_named

    out: list[PeakMeasurement] = []
    c, s = config.channels, config.size
    conv_shape = f"{config.depth}× conv3x3 {c}→{c} on {s}×{s}, batch {config.batch}"
    mm_shape = f"matmul {matmul_size}×{matmul_size} @ {matmul_size}×{matmul_size}"
    mm_flops = 2 * matmul_size**3
    for dtype in dtypes:
        dt = TORCH_DTYPES[dtype]
        with torch.inference_mode(), float32_as_named(torch, dtype):
            x = torch.randn(config.batch, c, s, s, device="cuda", dtype=dt)
            weights = [(torch.randn(c, c, 3, 3, device="cuda") / (9 * c) ** 0.5).to(dt) for _ in range(config.depth)]
            bias = torch.zeros(c, device="cuda", dtype=dt)

            def conv_chain():
                h = x
                for w in weights:
                    h = torch.nn.functional.conv2d(h, w, bias, padding=1)
                return h

            a = torch.randn(matmul_size, matmul_size, device="cuda", dtype=dt)
            b = torch.randn(matmul_size, matmul_size, device="cuda", dtype=dt)
            stats = measure(cuda_timed(conv_chain), 1, config.warmup, config.repeats)
            out.append(PeakMeasurement("torch cuda conv", "cuda", dtype, conv_shape, config.conv_flops, stats.min_ms, stats.p50_ms))
            stats = measure(cuda_timed(lambda: torch.mm(a, b)), 1, config.warmup, config.repeats)
            out.append(PeakMeasurement("torch cuda matmul", "cuda", dtype, mm_shape, mm_flops, stats.min_ms, stats.p50_ms))
        torch.cuda.empty_cache()
    return out
