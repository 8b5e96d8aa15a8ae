"""The unrolled model as one self-contained ONNX file, checked, and run with ONNX Runtime on the CPU.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) for opset ≥ 18. It is the
default since torch 2.9 and the only path that will remain (the TorchScript exporter is deprecated and
warns that it will be removed), it folds constants and shared-weight subgraphs (``optimize=True``), and it
takes a dynamic batch dimension through ``dynamic_shapes``. Its graphs are built at opset 18 and its
down-converter cannot rewrite ReduceMean's ``axes`` input as an attribute, so opset 17 uses the
TorchScript exporter (``dynamo=False``, constant folding on, ``dynamic_axes``) — still present in torch
2.11–2.13. If the dynamo path fails on some torch version, the TorchScript path is tried once and the
exporter used is recorded in the metadata.

The file is written as one protobuf (no external data: these models are well under 2 GB), with the
exporter's per-node debug records (Python stack traces, FX node text) stripped — they hold paths of the
build machine and make the bytes depend on where the export ran.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgenode.artifacts import atomic_path
from edgenode.errors import ArtifactError, UsageError, first_line, reraise_interrupt

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MIN_OPSET = 17
MAX_OPSET = 20  # the highest both exporters emit and TensorRT 10.3's ONNX parser (JetPack 6) reads
BATCH_DIM = "batch"


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset!r} is not supported", f"use an opset from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    return opset


@dataclass(frozen=True)
class OnnxGraph:
    proto: "onnx.ModelProto"  # noqa: F821
    exporter: str
    opset: int


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints, deprecation warnings and log lines (torchvision ops absent…)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_dynamo(model: torch.nn.Module, sample: torch.Tensor, opset: int):
    batch = torch.export.Dim(BATCH_DIM, min=1, max=65536)
    with _quiet_exporter():
        program = torch.onnx.export(
            model, (sample,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=True, dynamic_shapes=({0: batch},), external_data=False, optimize=True, verbose=False,
        )
    return program.model_proto


def _export_torchscript(model: torch.nn.Module, sample: torch.Tensor, opset: int):
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgenode-onnx.") as tmp, _quiet_exporter():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (sample,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=False, do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        )
        return onnx.load(str(path))


EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def torch_to_onnx(model: torch.nn.Module, image_size: int, opset: int = DEFAULT_OPSET) -> OnnxGraph:
    """Trace ``model`` (float32, eval) to ONNX with a dynamic batch axis; see the module docstring."""
    from edgenode.console import console

    check_opset(opset)
    # A float32 copy on the CPU, where the sample is: the caller's model may sit on a GPU (parity's reference) or be
    # in training mode, and is left as it was.
    model = copy.deepcopy(model).cpu().float().eval()
    sample = torch.zeros(2, 3, image_size, image_size)  # batch 2: a batch of 1 may be specialised away
    order = ["dynamo", "torchscript"] if opset >= 18 else ["torchscript"]
    errors = []
    for name in order:
        try:
            proto = EXPORTERS[name](model, sample, opset)
        except Exception as exc:  # noqa: BLE001 - an exporter bug on one torch version: try the other path
            reraise_interrupt(exc)
            errors.append(f"{name}: {first_line(exc, 1000)}")
            console.print(f"[yellow]warning:[/] torch.onnx {name} exporter failed ({errors[-1][:200]}); trying the next one")
            continue
        got = onnx_opset(proto)
        if got != opset:
            errors.append(f"{name}: produced opset {got}, not {opset}")
            continue
        return OnnxGraph(proto, f"torch.onnx {name} (torch {torch.__version__})", opset)
    raise ArtifactError(f"ONNX export at opset {opset} failed: {'; '.join(errors)}",
                        f"try another --opset (default {DEFAULT_OPSET})")


def onnx_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def strip_debug_info(proto) -> None:
    """Remove per-node exporter records (stack traces, FX text): build-machine paths, nondeterministic bytes."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        for info in (*graph.value_info, *graph.input, *graph.output):
            del info.metadata_props[:]
        for init in graph.initializer:
            del init.metadata_props[:]


def set_metadata(proto, props: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with ``props``."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path_or_proto) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path_or_proto), load_external_data=False) if isinstance(path_or_proto, (str, os.PathLike)) else path_or_proto
    return {p.key: p.value for p in proto.metadata_props}


def save_onnx(proto, path: str | os.PathLike) -> Path:
    """Write ``proto`` as one self-contained file, atomically."""
    data = proto.SerializeToString()
    if len(data) >= 2**31:
        raise ArtifactError(f"{path}: model of {len(data) / 2**30:.1f} GiB is over ONNX's 2 GiB single-file limit")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def check_onnx(path: str | os.PathLike) -> None:
    """``onnx.checker`` with full_check (type and shape inference); an invalid file is an ArtifactError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ArtifactError(f"{path}: fails the ONNX checker ({first_line(exc, 300)})", "this is an exporter bug; please report it") from None


def op_counts(proto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in proto.graph.node).items()))


def ort_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session, quiet (warnings only as errors), all graph optimisations on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session_or_path, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits (float32) of an ONNX model for float32 NCHW ``images``, batch by batch."""
    session = ort_session(session_or_path) if isinstance(session_or_path, (str, os.PathLike)) else session_or_path
    images = np.ascontiguousarray(images, dtype=np.float32)
    outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs).astype(np.float32, copy=False)


def io_signature(proto) -> dict[str, list]:
    """{"images": [batch, 3, H, W], "logits": [batch, C]} as written in the graph (dim_param or value)."""

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    return {v.name: dims(v) for v in (*proto.graph.input, *proto.graph.output)}


def check_io(proto, image_size: int, num_classes: int, source: str) -> None:
    """The contract every runtime relies on: float32 ``images`` [batch,3,H,W] in, float32 ``logits`` [batch,C] out."""
    import onnx

    want = {INPUT_NAME: [BATCH_DIM, 3, image_size, image_size], OUTPUT_NAME: [BATCH_DIM, num_classes]}
    got = io_signature(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    if got != want or any(t != onnx.TensorProto.FLOAT for t in types.values()):
        raise ArtifactError(f"{source}: inputs/outputs are {got} (types {types}), expected {want} float32",
                            "this is an exporter bug; please report it")
