"""GPU rows: torch CUDA eager and ``torch.compile`` (CUDA graphs) runs of the unrolled model, FP32/FP16/BF16.

Everything here runs only behind :func:`cuda_available` (``torch.cuda.is_available()``); on a CPU machine
the bench never calls into this module's CUDA paths, and importing it touches nothing on the device.

Timing on a GPU: kernels are queued asynchronously, so a wall clock around the Python call measures the
launch, not the work. Each timed call records a CUDA event before and after the forward pass and
synchronises on the second; ``elapsed_time`` is the device time between them. The input is copied to the
device before the first event (in a deployed pipeline it arrives there from the decoder), the logits are
copied back after the second.

``torch.compile(mode="reduce-overhead")`` compiles with Inductor and replays the whole forward as a CUDA
graph — for a small unrolled ODE, launch overhead is most of batch-1 latency, which is what CUDA graphs
remove. It compiles once per batch size (``dynamic=False``) during the warm-up calls.

An ``fp32`` row computes in IEEE float32 (:func:`float32_as_named`), as the parity reference and the engines
do: left to PyTorch's default, cuDNN runs float32 convolutions in TF32.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
from torch import nn

from edgenode.ode.solvers import integrate_fixed
from edgenode.runtime.base import Runner
from edgenode.runtime.torch_runner import ieee_float32

DTYPES = ("fp32", "fp16", "bf16")


class _LazyDtypes(dict):
    """{"fp32": torch.float32, ...}, filled on first use so importing this module does not import torch."""

    def __missing__(self, key):
        import torch

        self.update(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
        return dict.__getitem__(self, key)


TORCH_DTYPES = _LazyDtypes()


def cuda_available() -> bool:
    """True when torch sees a CUDA device (a CPU build of torch answers False without touching a driver)."""
    import torch

    return bool(torch.cuda.is_available())


def float32_as_named(torch, dtype: str):
    """A context in which a row named ``fp32`` computes in IEEE float32: PyTorch lets cuDNN run float32
    convolutions in TF32 by default (a 10-bit mantissa, on Ampere and newer GPUs), which would time and score
    another precision than the row's name. FP16 and BF16 rows are left as they are."""
    return ieee_float32(torch) if dtype == "fp32" else contextlib.nullcontext()


def cuda_timed(fn: Callable[[], object]) -> Callable[[], float]:
    """Wrap a CUDA call so it returns its device milliseconds between two events (synchronised)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed() -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return timed


class UnrolledForward(nn.Module):
    """stem → ``n_steps`` explicit fixed steps of f → head, with no counters or other Python side effects.

    Computes exactly what ``model.with_solver(SolverConfig(method, n_steps=N))`` computes, but without
    ``ODEBlock.nfe += 1``: a mutated module attribute would make ``torch.compile`` guard on it and recompile,
    and breaks CUDA-graph capture. The number of evaluations is known: ``evals_per_step · n_steps``.
    """

    def __init__(self, model, method: str, n_steps: int):
        super().__init__()
        self.stem, self.func, self.head = model.stem, model.ode.func, model.head
        self.method, self.n_steps = method, n_steps

    def forward(self, x):
        return self.head(integrate_fixed(self.func, self.stem(x), self.n_steps, self.method))


class CudaTorchRunner(Runner):
    """A torch module on the GPU in ``dtype``, eager or compiled; ``last_inference_ms`` is CUDA-event time."""

    backend = "torch"

    def __init__(self, module: nn.Module, dtype: str = "fp32", compile_mode: str | None = None):
        super().__init__()
        import torch

        self._torch = torch
        self.provider = "cuda"
        self.dtype_name = dtype
        self.dtype = TORCH_DTYPES[dtype]
        self.module = module.to(device="cuda", dtype=self.dtype).eval()
        self.compile_mode = compile_mode
        self._fn = torch.compile(self.module, mode=compile_mode, dynamic=False) if compile_mode else self.module
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.nfe = 0

    def describe(self) -> str:
        how = f"torch.compile({self.compile_mode})" if self.compile_mode else "eager"
        return f"torch cuda {how} {self.dtype_name}"

    def infer(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        device_x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to("cuda", self.dtype)
        torch.cuda.synchronize()
        with torch.inference_mode(), float32_as_named(torch, self.dtype_name):
            if self.compile_mode and hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are no longer read
            self._start.record()
            out = self._fn(device_x)
            self._end.record()
        self._end.synchronize()
        self.last_inference_ms = float(self._start.elapsed_time(self._end))
        self.total_inference_ms += self.last_inference_ms
        self.calls += 1
        self.nfe = int(getattr(self.module, "nfe", 0))  # the adaptive NeuralODECNN counts; UnrolledForward does not
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.module = None
        self._fn = None
        self._torch.cuda.empty_cache()
