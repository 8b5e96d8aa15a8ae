"""Error attribution's FP32 twin: only an FP32 ONNX of the same solver and checkpoint stands in for the artifact's,
an export of another checkpoint is never rebuilt from the reference, and an FP32 artifact is its own twin."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from edgenode.artifacts import read_sidecar, write_sidecar
from edgenode.export.metadata import ArtifactMetadata
from edgenode.ode.solvers import SolverConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(src: Path, folder: Path, **changes) -> Path:
    """``src`` and its sidecar copied into ``folder``, its metadata (ONNX properties and sidecar) changed by
    ``changes`` (``n_steps`` changes the unrolled solver's step count): a valid file that claims otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    if not changes:
        for name in (src.name, src.name + ".json"):
            shutil.copy(src.parent / name, folder / name)
        return dst
    record = {k: v for k, v in read_sidecar(src).items() if k not in ("sha256", "file")}
    if "n_steps" in changes:
        steps = changes.pop("n_steps")
        record["model"] = {**record["model"], "solver": {**record["model"]["solver"], "n_steps": steps}}
        record["steps"] = steps
    record.update(changes)
    meta = ArtifactMetadata.from_dict(record)
    proto = onnx.load(str(src))
    props = meta.to_onnx_props()
    for prop in proto.metadata_props:
        if prop.key in props:
            prop.value = props[prop.key]
    onnx.save(proto, str(dst))
    write_sidecar(dst, meta.to_dict())
    return dst


@pytest.fixture(scope="module")
def attribution_inputs(trained_run, synthetic_root):
    """(reference predictor, its logits, six preprocessed images)."""
    from edgenode.runtime import load_predictor

    reference = load_predictor(trained_run.best_checkpoint, reference_solver=SolverConfig("rk4", n_steps=8))
    x = reference.preprocess(sorted(synthetic_root.glob("images/*/*.png"))[::24])
    return reference, reference.predict_logits(x), x


@pytest.mark.parametrize("claim", [{"n_steps": 8}, {"source_checkpoint_sha256": "0" * 64}, {}])
def test_an_fp32_file_beside_the_artifact_is_its_twin_only_with_the_same_solver_and_checkpoint(
        attribution_inputs, shared_exports, tmp_path, claim):
    """An FP32 ONNX of RK4×8, or of another checkpoint, beside an RK4×4 FP16 file is not the FP16 file's FP32 twin:
    the twin is rebuilt in memory instead. The same file with matching metadata is used."""
    from edgenode.parity.attribution import Attributor
    from edgenode.runtime import load_predictor

    reference, ref_logits, x = attribution_inputs
    folder = tmp_path / "beside"
    fp16 = _copy(shared_exports["fp16"], folder)
    fp32 = _copy(shared_exports["fp32"], folder, **claim)
    info = load_predictor(fp16, provider="cpu").metadata
    name, logits = Attributor(reference, ref_logits, x).fp32_logits(info, [fp32])
    if claim:
        assert name.endswith("(rebuilt in memory)") and fp32.name not in name
    else:
        assert name == fp32.name
    assert logits.shape == ref_logits.shape


def test_an_export_of_another_checkpoint_is_not_rebuilt_from_the_reference(attribution_inputs, shared_exports, tmp_path):
    """With no FP32 file of its own, an export made from another checkpoint has no FP32 twin: rebuilding one from the
    reference's weights would attribute the difference between two checkpoints to precision."""
    from edgenode.parity.attribution import Attributor
    from edgenode.runtime import load_predictor

    reference, ref_logits, x = attribution_inputs
    fp16 = _copy(shared_exports["fp16"], tmp_path / "alone", source_checkpoint_sha256="0" * 64)
    predictor = load_predictor(fp16, provider="cpu")
    attributor = Attributor(reference, ref_logits, x)
    assert "comes from another checkpoint (cannot rebuild)" in attributor.fp32_logits(predictor.metadata, [])
    stages = {s.stage: s for s in attributor.stages(predictor, predictor.predict_logits(x))}
    assert stages["precision"].diff is None and "another checkpoint" in stages["precision"].reason


def test_an_fp32_artifact_is_its_own_twin_in_the_export_stage(attribution_inputs, shared_exports, tmp_path):
    """The export stage of an FP32 ONNX file compares the torch twin with that very file, not a graph rebuilt from
    the checkpoint (which is not what was shipped)."""
    from edgenode.parity import diff_logits
    from edgenode.parity.attribution import Attributor
    from edgenode.runtime import load_predictor

    reference, ref_logits, x = attribution_inputs
    fp32 = _copy(shared_exports["fp32"], tmp_path / "alone")
    predictor = load_predictor(fp32, provider="cpu")
    logits = predictor.predict_logits(x)
    attributor = Attributor(reference, ref_logits, x)
    stages = {s.stage: s for s in attributor.stages(predictor, logits)}
    assert stages["export"].b == f"{fp32.name} (cpu)"
    assert stages["export"].diff == diff_logits(attributor.twin_logits(predictor.metadata.solver), logits)
    assert stages["precision"].reason == "the artifact is the FP32 ONNX"
