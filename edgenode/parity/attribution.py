"""Where a deployed artifact's difference from the reference comes from, stage by stage.

The chain from the trained model to the deployed file has four links, each measured on the same inputs:

============  =====================================================  ==========================================
stage         compares                                               n/a when
============  =====================================================  ==========================================
solver        adaptive reference vs. torch FP32 with the artifact's  —
              fixed-step solver (e.g. RK4 × 4): discretisation
export        torch RK4-N FP32 vs. ONNX FP32 of the same steps       no FP32 ONNX found and rebuilding it failed
              (ONNX Runtime CPU)
precision     ONNX FP32 vs. the artifact, both on ONNX Runtime CPU   the artifact *is* the FP32 ONNX
              (an engine: vs. the engine on TensorRT)
runtime       the artifact on CPU vs. on the provider it ran on      only one provider is available
              (or on another provider when it ran on CPU)
============  =====================================================  ==========================================

Each stage isolates one cause, and the stages chain from the reference to the deployed output; ``total`` is the
reference vs. what was deployed. The ONNX stages run on ONNX Runtime's CPU provider; the torch models run where the
reference runs (a GPU when there is one, in IEEE float32: no TF32, see :mod:`edgenode.runtime.torch_runner`).

The FP32 ONNX for the export/precision stages is, in order: the artifact itself when it is FP32 ONNX, an
artifact passed alongside it (or in its folder) whose metadata says FP32, same solver and steps, same mirror
averaging, same source checkpoint; else a graph rebuilt in memory from the checkpoint (noted as such, since it
was not the file that was shipped). Results are cached, so a folder of FP32/FP16/INT8 exports of one step count
costs one torch twin and one FP32 ONNX run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgenode.errors import EdgenodeError, reraise_interrupt
from edgenode.ode.solvers import SolverConfig
from edgenode.parity.compare import StageDiff, diff_logits
from edgenode.runtime.artifact import ArtifactInfo, detect_kind, onnx_info
from edgenode.runtime.predictor import Predictor
from edgenode.runtime.providers import PROVIDER_NAMES

STAGES = ("solver", "export", "precision", "runtime", "total")


def _batched(run, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(x[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)])


def export_fp32_bytes(model, image_size: int, opset: int | None = None) -> bytes:
    """The unrolled torch model as FP32 ONNX bytes, by the same exporter ``edgenode export`` uses."""
    from edgenode.export import onnx_export as ox

    graph = ox.torch_to_onnx(model, image_size, opset or ox.DEFAULT_OPSET)
    return graph.proto.SerializeToString()


class Attributor:
    """Splits ``reference`` vs. artifact differences into solver/export/precision/runtime stages."""

    def __init__(self, reference: Predictor, reference_logits: np.ndarray, x: np.ndarray, batch_size: int = 64):
        self.reference = reference
        self.reference_logits = reference_logits
        self.x = x
        self.batch_size = batch_size
        self._twins: dict[SolverConfig, np.ndarray] = {}
        self._fp32: dict[tuple, tuple[str, np.ndarray] | str] = {}

    # --- the pieces, cached ---------------------------------------------------------------------------------

    def twin_logits(self, solver: SolverConfig) -> np.ndarray:
        """The checkpoint's weights with ``solver`` in torch FP32: what a perfect export would compute."""
        if solver not in self._twins:
            from edgenode.runtime.torch_runner import TorchRunner

            runner = TorchRunner(self.reference.runner.model.with_solver(solver), str(self.reference.runner.device))
            self._twins[solver] = _batched(runner.infer, self.x, self.batch_size)
        return self._twins[solver]

    def _find_fp32_onnx(self, info: ArtifactInfo, candidates: Sequence[Path]) -> Path | None:
        pool = list(candidates) + sorted(info.path.parent.glob("*.onnx"))
        for path in pool:
            try:
                if path.resolve() == info.path.resolve() or detect_kind(path) != "onnx":
                    continue
                other = onnx_info(path)
            except EdgenodeError:
                continue
            if (other.precision == "fp32" and other.solver == info.solver and other.mirror_average == info.mirror_average
                    and other.source_checkpoint_sha256 == info.source_checkpoint_sha256):
                return path
        return None

    def fp32_logits(self, info: ArtifactInfo, candidates: Sequence[Path]) -> tuple[str, np.ndarray] | str:
        """(name, logits) of the FP32 ONNX of ``info``'s solver, or the reason there is none."""
        key = (info.solver, info.mirror_average, info.source_checkpoint_sha256)
        if key in self._fp32:
            return self._fp32[key]
        from edgenode.runtime.onnx_runner import OnnxRuntimeRunner
        from edgenode.runtime.predictor import load_predictor

        found = self._find_fp32_onnx(info, candidates)
        try:
            if found is not None:
                with load_predictor(found, provider="cpu") as predictor:
                    value: tuple[str, np.ndarray] | str = (found.name, _batched(predictor.predict_logits, self.x, self.batch_size))
            elif info.source_checkpoint_sha256 != self.reference.metadata.sha256:
                value = "no FP32 ONNX of this export found, and it comes from another checkpoint (cannot rebuild)"
            else:
                model = self.reference.runner.model.with_solver(info.solver)
                data = export_fp32_bytes(model, info.input.image_size, info.extra.get("opset"))
                runner = OnnxRuntimeRunner(data, ["CPUExecutionProvider"])
                try:
                    value = (f"FP32 ONNX {info.solver.describe()} (rebuilt in memory)", _batched(runner.infer, self.x, self.batch_size))
                finally:
                    runner.close()
        except EdgenodeError as exc:
            value = f"FP32 ONNX unavailable ({exc})"
        except Exception as exc:  # noqa: BLE001 - the exporter can fail in many ways; attribution is best-effort
            reraise_interrupt(exc)
            value = f"rebuilding the FP32 ONNX failed ({type(exc).__name__}: {str(exc).strip()[:120]})"
        self._fp32[key] = value
        return value

    def on_provider(self, info: ArtifactInfo, provider: str) -> tuple[str, np.ndarray] | str:
        """``info``'s ONNX file run on one provider (short name), or why it cannot be."""
        from edgenode.runtime.onnx_runner import OnnxRuntimeRunner, available_providers
        from edgenode.runtime.predictor import ort_providers

        try:
            runner = OnnxRuntimeRunner(info.path, ort_providers(info, provider, available_providers()), explicit=True)
        except EdgenodeError as exc:
            return f"{provider} failed to start ({exc})"
        try:
            logits = _batched(runner.infer, self.x, self.batch_size)
        finally:
            runner.close()
        return f"{info.path.name} ({provider})", logits

    def other_provider(self, predictor: Predictor) -> str | None:
        """CPU when the artifact ran on a GPU provider; else the first GPU provider available (None: none)."""
        from edgenode.runtime.onnx_runner import available_providers

        if predictor.provider != "cpu":
            return "cpu"
        available = available_providers()
        gpus = ("cuda",) if predictor.metadata.int8_target == "ort" else ("tensorrt", "cuda")  # uint8 Q/DQ: not TensorRT's
        return next((p for p in gpus if PROVIDER_NAMES[p] in available), None)

    # --- the table ------------------------------------------------------------------------------------------

    def stages(self, predictor: Predictor, logits: np.ndarray, candidates: Sequence[Path] = ()) -> list[StageDiff]:
        """The attribution rows of one artifact whose logits (on its own provider) are ``logits``."""
        info = predictor.metadata
        ref_name = f"reference ({self.reference.metadata.solver.describe()})"
        name = f"{info.path.name} ({predictor.provider})"
        rows: list[StageDiff] = []

        # the artifact on ONNX Runtime CPU, and on a second provider for the runtime stage
        cpu: tuple[str, np.ndarray] | str
        other: tuple[str, np.ndarray] | str
        if info.kind == "engine":
            cpu, other = "an engine runs on TensorRT only", "a TensorRT engine runs on TensorRT only"
        else:
            second = self.other_provider(predictor)
            if predictor.provider == "cpu":
                cpu = (name, logits)
                other = self.on_provider(info, second) if second else "only the CPU provider is available here"
            else:
                cpu = self.on_provider(info, "cpu")
                other = cpu

        if info.solver.is_adaptive:
            rows.append(StageDiff("solver", ref_name, "artifact solver", reason="the artifact's solver is adaptive"))
            twin = None
        else:
            twin = self.twin_logits(info.solver)
            twin_name = f"torch FP32 {info.solver.describe()}"
            rows.append(StageDiff("solver", ref_name, twin_name, diff_logits(self.reference_logits, twin)))

        is_fp32_onnx = info.kind == "onnx" and info.precision == "fp32"
        fp32 = cpu if is_fp32_onnx else self.fp32_logits(info, candidates)
        if twin is None:
            rows.append(StageDiff("export", "torch FP32", "ONNX FP32", reason="no fixed-step torch twin"))
        elif isinstance(fp32, str):
            rows.append(StageDiff("export", twin_name, "ONNX FP32 (cpu)", reason=fp32))
        else:
            rows.append(StageDiff("export", twin_name, fp32[0], diff_logits(twin, fp32[1])))

        deployed = (name, logits) if info.kind == "engine" else cpu  # precision is judged on the CPU
        if is_fp32_onnx:
            rows.append(StageDiff("precision", info.path.name, name, reason="the artifact is the FP32 ONNX"))
        elif isinstance(fp32, str) or isinstance(deployed, str):
            rows.append(StageDiff("precision", "ONNX FP32 (cpu)", name, reason=fp32 if isinstance(fp32, str) else deployed))
        else:
            rows.append(StageDiff("precision", fp32[0], deployed[0], diff_logits(fp32[1], deployed[1])))

        if isinstance(other, str):
            rows.append(StageDiff("runtime", name, "another provider", reason=other))
        elif predictor.provider == "cpu":
            rows.append(StageDiff("runtime", name, other[0], diff_logits(logits, other[1])))
        else:
            rows.append(StageDiff("runtime", other[0], name, diff_logits(other[1], logits)))
        rows.append(StageDiff("total", ref_name, name, diff_logits(self.reference_logits, logits)))
        return rows
