"""``export_model(ExportConfig) -> ExportResult``: checkpoint → unrolled model → ONNX FP32/FP16/INT8 (→ engines).

Order of work, each step failing with a one-line error before anything is left half-done:

1. load the checkpoint, its split manifest (sha256 must match) and the validation split;
2. choose the discretisation: the trained one, the user's, or ``--steps auto`` (sweep on val, tables + plot);
3. check that the model is a valid ODE (warn loudly when it is not);
4. FP32 ONNX: export, Conv count = N explicit steps, checker, ONNX Runtime vs torch ≤ 1e-4 on val images.
   FP32 is always written: it is the reference every other precision is checked against and the graph
   whose tensor names the TensorRT calibration tables use;
5. FP16 and INT8 (per target) from the FP32 file, each run in ONNX Runtime and compared with FP32;
6. golden samples, JSON sidecars, the split's ``manifest.json`` and ``export_report.json/.md``; engines with
   ``--format engine``.

Every ONNX file is written to a temporary name, checked there, and renamed only when its checks pass. An engine
is checked by replaying its source file's golden samples (``edgenode verify``), on the device that built it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgenode.artifacts import atomic_path, human_size, sha256_file, sidecar_path, write_sidecar
from edgenode.checkpoint import Checkpoint, load_checkpoint
from edgenode.console import console, progress_bar
from edgenode.errors import ArtifactError, EdgenodeError, ParityError, UsageError
from edgenode.export import fp16 as fp16_mod
from edgenode.export import int8 as int8_mod
from edgenode.export import numerics
from edgenode.export import onnx_export as ox
from edgenode.export.config import ExportConfig
from edgenode.export.golden import golden_path, write_golden
from edgenode.export.metadata import ArtifactMetadata
from edgenode.export.report import write_report
from edgenode.export.steps import (
    TOLERANCE_LADDER, OdeValidity, accuracy, agreement, check_ode_validity, choose_steps, max_abs_diff, sweep_steps,
    write_sweep,
)
from edgenode.export.unroll import AUTO, describe, expected_conv_nodes, resolve_method, resolve_steps, unroll

if TYPE_CHECKING:
    from edgenode.data import Manifest

VALIDITY_MAX_IMAGES = 512  # the float64 solver ladder is the slowest check; an even spread of val images suffices
FP16_MIN_AGREEMENT = 0.99
INT8_MIN_AGREEMENT = 0.95
CALIBRATION_MANIFEST = "calibration-set.json"


@dataclass
class ExportResult:
    """Paths written (``artifacts`` by key: fp32, fp16, int8-ort, int8-trt, and ``<key>-engine``), their
    metadata, every file written, and the report (also in ``export_report.json``)."""

    out_dir: Path
    method: str
    steps: int
    artifacts: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, ArtifactMetadata] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Inputs:
    """The checkpoint and the images every check runs on."""

    ckpt: Checkpoint
    manifest: Any
    manifest_path: Path
    root: Path
    val_images: torch.Tensor
    val_labels: np.ndarray


def _warn_of_older_artifacts(out: Path, written: list[Path], report: dict) -> None:
    """Say which models in ``out`` this export did not write: `parity`, `verify`, `bench` and `engine` take every
    model of a folder, and one left by an earlier export (another precision, step count or checkpoint) would be
    measured beside this one's without a word. They are not deleted: they are the user's files."""
    from edgenode.runtime.artifact import find_artifacts

    mine = {path.resolve() for path in written}
    older = [path.name for path in find_artifacts(out) if path.resolve() not in mine]
    if older:
        _warn(report, f"{out} also holds {', '.join(older)} from an earlier export; commands given the folder take "
                      "them too (delete them, or export into a new --out)")


def _warn(report: dict, message: str) -> None:
    report.setdefault("warnings", []).append(message)
    console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)


def load_inputs(config: ExportConfig) -> _Inputs:
    """Checkpoint, the split manifest it was trained on (verified by sha256), data root and val split."""
    from edgenode import data as edata
    from edgenode.data.manifest import manifest_of_run
    from edgenode.runtime.artifact import expect_kind

    expect_kind(config.checkpoint, ("checkpoint",), "`edgenode export`")  # an ONNX file or engine: exit 2, one line
    ckpt = load_checkpoint(config.checkpoint)
    manifest_path, manifest = manifest_of_run(config.checkpoint, ckpt.manifest_sha256, config.manifest)
    data = config.data or (ckpt.train_config or {}).get("data")
    if not data:
        raise UsageError("no data folder to draw validation and calibration images from", "pass --data DIR")
    root = Path(data)
    if not config.data and not root.is_dir():  # the folder it was trained in, perhaps on another machine
        raise UsageError(f"{config.checkpoint} was trained on {root}, which is not here, and no --data was given",
                         "pass --data with this machine's copy of that data set (the folder that holds images/)")
    images, labels = edata.load_scored_split(manifest, manifest_path, root, "val", ckpt.input_spec)
    return _Inputs(ckpt, manifest, manifest_path, root, edata.normalize(images, manifest.mean, manifest.std).float(), labels)


def choose_discretisation(config: ExportConfig, inputs: _Inputs, model, report: dict, result_files: list) -> tuple[str, int, str]:
    """(method, steps, where the steps came from); runs and writes the sweep for ``auto``."""
    trained = inputs.ckpt.model_config.solver
    method = resolve_method(trained, config.method)
    steps = resolve_steps(trained, method, config.steps)
    if steps != AUTO:
        source = "--steps" if config.steps is not None else f"trained discretisation ({trained.describe()})"
        return method, steps, source
    sweep = sweep_steps(model, inputs.val_images, inputs.val_labels, method, config.sweep_candidates,
                        config.sweep_criteria, config.reference_tol)
    result_files += write_sweep(sweep, config.out)
    report["step_sweep"] = sweep.to_dict()
    steps = choose_steps(sweep, config.out)
    row = next(r for r in sweep.rows if r.steps == steps)
    console.print(f"--steps auto: {method}×{steps} (NFE {row.nfe}) agrees with {sweep.reference['solver']} on "
                  f"{row.agreement:.1%} of {sweep.n_images} val images; table in {Path(config.out) / 'steps_sweep.md'}")
    return method, steps, "auto (validation sweep)"


def _print_rung(rung, seconds: float) -> None:
    console.print(f"  {rung.solver}: NFE {rung.nfe}, val accuracy {rung.accuracy:.3f} ({seconds:.1f} s)", soft_wrap=True)


def report_validity(validity: OdeValidity, report: dict) -> None:
    from rich.panel import Panel

    report["ode_validity"] = validity.to_dict()
    if validity.converged:
        console.print(validity.summary(), soft_wrap=True)
        return
    text = ("This model does not behave as an ODE solved accurately (Ott et al. 2021, 'ResNet after all?'):\n- "
            + "\n- ".join(validity.reasons)
            + f"\nThe artifacts reproduce {validity.method}×{validity.steps} exactly (the network as trained), but an "
            "accurate solve of its ODE answers differently on some images")
    if validity.suggested_steps:
        text += (f"; {validity.method}×{validity.suggested_steps} agrees with the tightest dopri5 solve on "
                 f"{validity.suggested_agreement:.1%}: export with --steps {validity.suggested_steps} to deploy a solve of "
                 f"the ODE ({validity.suggested_steps // validity.steps}× the cost), or retrain with a finer or adaptive solver.")
    else:
        text += "; retrain with a finer or adaptive solver if the ODE view matters."
    console.print(Panel(text, title="[bold red]warning: not a valid ODE[/]", border_style="red"), soft_wrap=False)
    report.setdefault("warnings", []).append("not a valid ODE: " + "; ".join(validity.reasons))


def golden_indices(n: int, count: int) -> np.ndarray:
    """``count`` of ``n`` validation images spread evenly over the split (so over the classes, listed in order)."""
    return np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))


class _Writer:
    """Writes one ONNX artifact: stage under a temporary name, check, write its golden file and sidecar, rename."""

    def __init__(self, config: ExportConfig, inputs: _Inputs, result: ExportResult, ref_logits: np.ndarray, stem: str):
        self.config, self.inputs, self.result, self.ref_logits, self.stem = config, inputs, result, ref_logits, stem
        self.golden = golden_indices(len(inputs.val_labels), config.golden_count)
        self.fp32_logits: np.ndarray | None = None
        self.proto32 = None  # the FP32 graph (with its metadata), source of FP16
        self.meta32: ArtifactMetadata | None = None

    def path(self, tag: str) -> Path:
        return Path(self.config.out) / f"{self.stem}-{tag}.onnx"

    def write(self, key: str, tag: str, proto, meta: ArtifactMetadata, extra_checks=None) -> dict[str, Any]:
        started = time.perf_counter()
        path = self.path(tag)
        ckpt = self.inputs.ckpt
        ox.check_io(proto, ckpt.input_spec.image_size, len(ckpt.classes), path.name)
        meta = dataclasses.replace(meta, extra={**meta.extra, "golden": golden_path(path).name})
        ox.set_metadata(proto, meta.to_onnx_props())
        with atomic_path(path) as tmp:
            ox.save_onnx(proto, tmp)
            ox.check_onnx(tmp)
            logits = ox.run_onnx(tmp, self.inputs.val_images.numpy())
            checks = {"max_abs_error_vs_torch": max_abs_diff(logits, self.ref_logits),
                      "val_accuracy": accuracy(logits, self.inputs.val_labels)}
            if self.fp32_logits is not None:
                checks["agreement_with_fp32"] = agreement(logits, self.fp32_logits)
                checks["max_abs_diff_vs_fp32"] = max_abs_diff(logits, self.fp32_logits)
            if extra_checks is not None:
                checks.update(extra_checks(tmp, logits))
            # golden file and sidecar before the rename: a crash in between leaves a sidecar that the old file (if
            # any) fails, never a new file without one, which would load as unverified
            digest = sha256_file(tmp)
            golden = write_golden(path, self.inputs.val_images.numpy()[self.golden], logits[self.golden], self.ref_logits[self.golden])
            sidecar = write_sidecar(path, meta.to_dict(), sha256=digest)
        size = path.stat().st_size
        self.result.artifacts[key] = path
        self.result.metadata[key] = meta
        self.result.files += [path, sidecar, golden]
        self.result.report["artifacts"].append({
            "key": key, "file": path.name, "precision": meta.precision, "int8_target": meta.int8_target,
            "size_bytes": size, "sha256": digest, "golden": golden.name, "checks": checks,
        })
        agree = f", top-1 agreement with FP32 {checks['agreement_with_fp32']:.1%}" if "agreement_with_fp32" in checks else ""
        console.print(f"[green]✓[/] wrote {path} ({human_size(size)}) in {time.perf_counter() - started:.1f} s: "
                      f"max |Δ| vs torch {checks['max_abs_error_vs_torch']:.2e}{agree}", soft_wrap=True)
        return checks


def export_fp32(w: _Writer, model, meta: ArtifactMetadata, method: str, steps: int) -> None:
    config, inputs = w.config, w.inputs
    graph = ox.torch_to_onnx(model, inputs.ckpt.input_spec.image_size, config.opset)
    ox.strip_debug_info(graph.proto)
    convs, expected = ox.op_counts(graph.proto).get("Conv", 0), expected_conv_nodes(model, method, steps)
    if convs != expected:
        raise ArtifactError(f"the exported graph has {convs} Conv nodes, expected {expected} for {method}×{steps} unrolled steps",
                            "the ODE block was not unrolled into explicit steps; this is a bug, please report it")
    meta = dataclasses.replace(meta, extra={**meta.extra, "exporter": graph.exporter, "opset": graph.opset, "conv_nodes": convs})

    def parity(tmp, logits):
        # inf/NaN first (a NaN error would pass any "error > limit" test), named at the node where it starts
        numerics.check_logits(tmp, logits, inputs.val_images.numpy(), "FP32 model", "validation images", saturation=False)
        error = max_abs_diff(logits, w.ref_logits)
        if not error <= config.max_fp32_abs_error:
            raise ParityError(f"FP32 ONNX differs from the torch unrolled model by {error:.2e} (max abs logit), "
                              f"more than {config.max_fp32_abs_error:g}", "this is an exporter bug; please report it")
        w.fp32_logits = logits
        return {"conv_nodes": convs, "expected_conv_nodes": expected}

    w.write("fp32", "fp32", graph.proto, meta, parity)
    w.proto32 = graph.proto
    w.meta32 = w.result.metadata["fp32"]
    for stale in calibration_table_paths(w.result.artifacts["fp32"]):  # an earlier FP32 file's, under this one's name
        stale.unlink(missing_ok=True)  # (no sidecar ties a table to its graph); INT8 for TensorRT writes them anew


def calibration_table_paths(fp32: Path) -> tuple[Path, Path]:
    """TensorRT's calibration cache and ONNX Runtime's TensorRT table of the FP32 file ``fp32``."""
    base = fp32.with_suffix("")
    return base.with_name(base.name + ".calibration.cache"), base.with_name(base.name + ".calibration.flatbuffers")


def export_fp16(w: _Writer, calib_images: np.ndarray, report: dict) -> None:
    proto = fp16_mod.convert_to_fp16(w.proto32)
    half, full = fp16_mod.half_initializer_count(proto)
    meta = dataclasses.replace(w.meta32, precision="fp16", extra={
        **w.meta32.extra, "fp16": {"converter": "onnxruntime.transformers.float16 (keep_io_types)",
                                   "float32_ops": list(fp16_mod.FP32_OPS)}})

    def finite(tmp, logits):
        warning = numerics.check_logits(tmp, logits, w.inputs.val_images.numpy(), "FP16 model", "validation images",
                                        precision="fp16")
        numerics.check_logits(tmp, ox.run_onnx(tmp, calib_images), calib_images, "FP16 model", "calibration images",
                              saturation=False, precision="fp16")
        if warning:
            _warn(report, warning)
        return {"float16_initializers": half, "float32_initializers": full, "finite_on_calibration_images": True}

    checks = w.write("fp16", "fp16", proto, meta, finite)
    if checks["agreement_with_fp32"] < FP16_MIN_AGREEMENT:
        _warn(report, f"FP16 agrees with FP32 on only {checks['agreement_with_fp32']:.1%} of val images (expected ≥ {FP16_MIN_AGREEMENT:.0%})")


def export_int8(w: _Writer, target: str, calib_images: np.ndarray, calibration: dict, report: dict,
                ranges: dict[str, tuple[float, float]] | None = None) -> None:
    recipe = int8_mod.RECIPES[target]
    proto = int8_mod.quantize_int8(w.result.artifacts["fp32"], target, calib_images, w.config.calibration_method, ranges)
    summary = int8_mod.qdq_summary(proto)
    meta = dataclasses.replace(w.meta32, precision="int8", int8_target=target, extra={
        **w.meta32.extra, "int8": {"recipe": recipe.summary, "activation_type": recipe.activation_type,
                                   "weight_type": recipe.weight_type, "per_channel": True,
                                   "quantized_ops": list(int8_mod.QUANTIZED_OPS), "calibration": calibration}})
    fp32_size = w.result.artifacts["fp32"].stat().st_size

    def finite(tmp, logits):
        warning = numerics.check_logits(tmp, logits, w.inputs.val_images.numpy(), f"INT8 ({target}) model",
                                        "validation images", precision="int8")
        if warning:
            _warn(report, warning)
        return {"qdq": summary, "size_ratio_vs_fp32": Path(tmp).stat().st_size / fp32_size}

    checks = w.write(recipe.file_tag, recipe.file_tag, proto, meta, finite)
    w.result.report["artifacts"][-1]["note"] = f"{checks['size_ratio_vs_fp32']:.2f}× the FP32 file; {recipe.summary}"
    if checks["agreement_with_fp32"] < INT8_MIN_AGREEMENT:
        others = [m for m in ("percentile", "minmax") if m != w.config.calibration_method]  # entropy: RESULTS.md
        _warn(report, f"INT8 ({target}) agrees with FP32 on only {checks['agreement_with_fp32']:.1%} of val images "
                      f"(expected ≥ {INT8_MIN_AGREEMENT:.0%}); try --calibration-method {others[0]} or more --calibration-per-class")


def record_calibration(config: ExportConfig, cal, result: ExportResult) -> dict:
    """Record the calibration set (``cal``: a CalibrationSet) beside the artifacts; what the report says of it."""
    path = cal.save(Path(config.out) / CALIBRATION_MANIFEST)
    result.files.append(path)
    return {"manifest": path.name, "images": len(cal), "per_class": cal.per_class, "seed": cal.seed,
            "split": cal.split, "method": config.calibration_method, "sha256": sha256_file(path)}


def write_calibration_tables(w: _Writer, calib_images: np.ndarray, calibration: dict) -> None:
    from edgenode.calibration import compute_tensor_ranges, write_ort_trt_table, write_trt_calibration_cache

    fp32 = w.result.artifacts["fp32"]
    ranges = compute_tensor_ranges(fp32, calib_images, w.config.calibration_method)
    cache_path, table_path = calibration_table_paths(fp32)
    cache = write_trt_calibration_cache(ranges, cache_path, w.config.trt_cache_version)
    table = write_ort_trt_table(ranges, table_path)
    w.result.files += [cache, table]
    calibration.update(tensorrt_cache=cache.name, ort_tensorrt_table=table.name, tensors=len(ranges),
                       tensorrt_cache_version=w.config.trt_cache_version)


def build_engines(config: ExportConfig, result: ExportResult) -> None:
    from edgenode.export.tensorrt import build_engine

    # The U8S8 file is for ONNX Runtime only: TensorRT supports symmetric signed INT8 Q/DQ alone.
    keys = [k for k in result.artifacts if k.split("-")[0] in config.precisions and k != "int8-ort"]
    for key in keys:
        started = time.perf_counter()
        path, meta = build_engine(result.artifacts[key], result.metadata[key], config.engine)
        result.artifacts[f"{key}-engine"] = path
        result.metadata[f"{key}-engine"] = meta
        result.files += [path, sidecar_path(path)]
        result.report["artifacts"].append({"key": f"{key}-engine", "file": path.name, "precision": meta.precision,
                                           "int8_target": meta.int8_target, "size_bytes": path.stat().st_size,
                                           "sha256": sha256_file(path), "note": f"TensorRT {meta.extra['tensorrt_version']}, "
                                           f"{meta.extra['gpu_name']} (sm {meta.extra['compute_capability']})"})
        console.print(f"[green]✓[/] built {path} ({human_size(path.stat().st_size)}) in {time.perf_counter() - started:.1f} s; "
                      f"check it with `edgenode verify {path}`")


def copy_manifest(manifest: Manifest, manifest_path: Path, out: Path, report: dict) -> list[Path]:
    """The split beside the exported files, so that an export folder copied to a device is scored by ``evaluate``
    without ``--manifest``. Another split's manifest already there is replaced when no artifact left in the folder
    was exported from it, else left alone with a warning: the folder then holds exports of two splits."""
    from edgenode.artifacts import atomic_write_bytes
    from edgenode.data import Manifest
    from edgenode.runtime.artifact import find_artifacts

    target = out / "manifest.json"
    new_sha = manifest.sha256
    if target.is_file():
        try:
            old_sha = Manifest.load(target).sha256
        except EdgenodeError:  # not a manifest after all: nothing can depend on it
            old_sha = None
        if old_sha == new_sha:  # the same split (or the run folder itself)
            return [target]
        users = [p.name for p in find_artifacts(out) if old_sha is not None and _trained_on(p) == old_sha]
        if users:
            _warn(report, f"{target} is the split of {users[0]} and was left as it is: score this export's files with "
                          f"--manifest {manifest_path}")
            return []
    return [atomic_write_bytes(target, manifest_path.read_bytes())]


def _trained_on(artifact: Path) -> str | None:
    """The manifest sha256 an exported file's sidecar records (None without a readable one)."""
    from edgenode.artifacts import read_json

    try:
        return read_json(sidecar_path(artifact)).get("manifest_sha256") if sidecar_path(artifact).is_file() else None
    except (EdgenodeError, AttributeError):  # a damaged sidecar is verify's business, not the end of an export
        return None


def base_metadata(inputs: _Inputs, unrolled, method: str, steps: int, steps_source: str, validity: OdeValidity | None) -> ArtifactMetadata:
    ckpt = inputs.ckpt
    extra: dict[str, Any] = {"method": method, "method_description": describe(method, steps), "steps_source": steps_source,
                             "checkpoint_epoch": ckpt.epoch}
    if validity is not None:
        extra.update(ode_valid=validity.converged, ode_validity_reasons=list(validity.reasons))
    return ArtifactMetadata(
        classes=list(ckpt.classes), input=ckpt.input_spec, model=unrolled.config.to_dict(),
        source_solver=ckpt.model_config.solver.to_dict(), precision="fp32", steps=steps,
        source_checkpoint_sha256=ckpt.sha256, manifest_sha256=inputs.manifest.sha256, extra=extra,
    )


def export_model(config: ExportConfig) -> ExportResult:
    """Run the whole export (module docstring); returns what was written and the report."""
    from edgenode.runtime.providers import require_onnxruntime

    started = time.perf_counter()
    require_onnxruntime()  # export checks every file with it (and quantises with it): fail before any work
    if config.format == "engine":
        from edgenode.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail before any work when TensorRT is missing
    inputs = load_inputs(config)
    calibration_set = None
    if "fp16" in config.precisions or config.wants_int8:  # drawn first: a bad --calibration-per-class fails before work
        from edgenode.calibration import select_calibration_set

        calibration_set = select_calibration_set(inputs.manifest, config.calibration_per_class, config.calibration_seed)
        # decoded now: a picture that no longer reads fails the export before it writes anything, not after FP32
        calib_images = calibration_set.load_images(inputs.manifest, inputs.root)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model = inputs.ckpt.build_model()
    if config.mirror_average:  # before everything that runs the model: sweep, ODE check, references, graph
        model = model.with_mirror_average(True)
    report: dict[str, Any] = {"config": config.to_dict(), "artifacts": [], "warnings": [],
                              "checkpoint": {"path": str(config.checkpoint), "sha256": inputs.ckpt.sha256,
                                             "solver": inputs.ckpt.model_config.solver.describe(), "epoch": inputs.ckpt.epoch},
                              "manifest": {"sha256": inputs.manifest.sha256},
                              "checks_on": f"{len(inputs.val_labels)} validation images"}
    files: list[Path] = []
    method, steps, steps_source = choose_discretisation(config, inputs, model, report, files)
    result = ExportResult(out, method, steps, files=files, report=report)
    unrolled = unroll(model, method, steps)
    n_val = len(inputs.val_labels)
    written = ["fp32"] + [p for p in config.precisions if p != "fp32"]  # FP32 always: the others are checked against it
    console.print(f"exporting {Path(config.checkpoint).name} as {describe(method, steps)}"
                  f"{', mirror-averaged' if config.mirror_average else ''}: {', '.join(written)}; each file "
                  f"checked against torch on {n_val} val images", markup=False)
    validity = None
    if config.check_ode:
        subset = golden_indices(n_val, VALIDITY_MAX_IMAGES)
        console.print(f"checking the ODE on {len(subset)} val images in float64 ({method}×{steps}, ×{2 * steps}, "
                      f"×{4 * steps}, dopri5 down to rtol {min(TOLERANCE_LADDER):g}; minutes on a CPU, --no-check-ode skips it)", soft_wrap=True)
        validity = check_ode_validity(model, inputs.val_images[subset], inputs.val_labels[subset], method, steps,
                                      on_rung=_print_rung)
        report_validity(validity, report)
    parts = []
    with torch.no_grad(), progress_bar("torch reference", n_val) as advance:
        for i in range(0, n_val, 64):  # batched: a full split through 4N evaluations of f would hold every stage at once
            parts.append(unrolled(inputs.val_images[i : i + 64]))
            advance(len(parts[-1]))
    ref_logits = torch.cat(parts).double().numpy()
    report["deployed"] = {"method": method, "steps": steps, "description": describe(method, steps), "steps_source": steps_source,
                          "mirror_average": config.mirror_average, "torch_val_accuracy": accuracy(ref_logits, inputs.val_labels)}
    meta = base_metadata(inputs, unrolled, method, steps, steps_source, validity)
    writer = _Writer(config, inputs, result, ref_logits, f"model-{method}x{steps}" + ("-mirror" if config.mirror_average else ""))
    export_fp32(writer, unrolled, meta, method, steps)
    report.update(exporter=writer.meta32.extra["exporter"], opset=writer.meta32.extra["opset"])
    if calibration_set is not None:
        calibration = record_calibration(config, calibration_set, result)
        report["calibration"] = calibration
        if "fp16" in config.precisions:
            export_fp16(writer, calib_images, report)
        if config.wants_int8:
            targets = int8_mod.int8_targets(config.int8_target)
            if "tensorrt" in targets:
                write_calibration_tables(writer, calib_images, calibration)
            # entropy's threshold search is the slow part of its export (minutes): once, for both targets
            ranges = (int8_mod.entropy_ranges(writer.result.artifacts["fp32"], calib_images)
                      if config.calibration_method == "entropy" else None)
            for target in targets:
                export_int8(writer, target, calib_images, calibration, report, ranges)
    if "fp32" not in config.precisions:
        report["artifacts"][0]["note"] = "reference for the other precisions"
    if config.format == "engine":
        build_engines(config, result)
    result.files += copy_manifest(inputs.manifest, inputs.manifest_path, out, report)
    _warn_of_older_artifacts(out, result.files, report)
    report["elapsed_s"] = time.perf_counter() - started
    result.files += write_report(out, report)
    console.print(f"[bold]edgenode export[/] {method}×{steps}{' mirror-averaged' if config.mirror_average else ''}: {len(result.artifacts)} artifact(s) in {out} "
                  f"in {report['elapsed_s']:.1f} s; report {out / 'export_report.md'}")
    return result
