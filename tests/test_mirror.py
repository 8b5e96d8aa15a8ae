"""Mirror averaging (`export --mirror-average`, `infer --mirror-average`): each picture is classified together
with its left-right mirror image, inside the model, so every stage (torch, ONNX, INT8, parity) computes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edgenode.bench.flops import config_flops, onnx_graph_flops
from edgenode.checkpoint import load_checkpoint
from edgenode.cli import app
from edgenode.errors import UsageError
from edgenode.export import ExportConfig, export_model
from edgenode.export import onnx_export as ox
from edgenode.export.unroll import unroll
from edgenode.model import ModelConfig, build_model, preset_config, unit_rows
from edgenode.parity import ParityConfig, run_parity
from edgenode.runtime import load_predictor


def flip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[3])


@pytest.mark.parametrize("arch", ["faceode", "odenet"])
def test_mirror_averaged_model_is_flip_invariant_and_merges_the_two_views(arch):
    torch.manual_seed(0)
    plain = build_model(preset_config(arch, 5, width=8)).eval()
    mirrored = plain.with_mirror_average(True)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        got = mirrored(x)
        np.testing.assert_allclose(mirrored(flip(x)).numpy(), got.numpy(), atol=1e-5)
        features_a, logits_a = plain(x, return_features=True)
        features_b, logits_b = plain(flip(x), return_features=True)
        if arch == "faceode":  # cosine head: unit features of both views summed, then classified
            want = plain.head[-1](unit_rows(features_a) + unit_rows(features_b))
        else:  # linear head: the mean feature, i.e. the mean of the two views' logits
            want = (logits_a + logits_b) / 2
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
        merged, logits = mirrored(x, return_features=True)
        assert merged.shape == features_a.shape and torch.allclose(logits, got)
        assert not torch.allclose(plain(x), got, atol=1e-4), "the plain model must stay plain"
    assert plain.config.mirror_average is False and mirrored.config.mirror_average is True
    assert mirrored.with_solver(preset_config(arch, 5).solver).config.mirror_average is True


def test_model_config_record_keeps_the_old_format_unless_mirrored():
    config = preset_config("faceode", 5)
    record = config.to_dict()
    assert "mirror_average" not in record, "a plain model's record must stay readable by edgenode without the option"
    assert ModelConfig.from_dict(record) == config
    mirrored = ModelConfig.from_dict({**record, "mirror_average": True})
    assert mirrored.to_dict()["mirror_average"] is True and ModelConfig.from_dict(mirrored.to_dict()) == mirrored
    with pytest.raises(UsageError, match="mirror_average must be true or false"):
        ModelConfig.from_dict({**record, "mirror_average": "yes"})
    with pytest.raises(UsageError, match="--mirror-average must be true or false"):
        ExportConfig(checkpoint="best.pt", out="out", mirror_average=1)


@pytest.fixture(scope="module")
def mirror_exports(trained_run, synthetic_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mirror-exports")
    result = export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(out), precisions="fp32,int8",
                                       steps=4, data=str(synthetic_root), int8_target="ort", check_ode=False, opset=17,
                                       mirror_average=True))
    return result.artifacts


def test_export_bakes_the_mirror_into_the_graph(mirror_exports, trained_run, shared_exports):
    fp32 = mirror_exports["fp32"]
    assert fp32.name == "model-rk4x4-mirror-fp32.onnx" and mirror_exports["int8-ort"].name == "model-rk4x4-mirror-int8-ort.onnx"
    info = load_predictor(fp32, provider="cpu").metadata
    assert info.mirror_average and "mirror-averaged" in info.describe() and info.to_dict()["mirror_average"] is True
    assert not load_predictor(shared_exports["fp32"], provider="cpu").metadata.mirror_average
    model = unroll(load_checkpoint(trained_run.best_checkpoint).build_model().with_mirror_average(True), "rk4", 4)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for path in mirror_exports.values():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (x[:1], x):  # batch 1 runs as batch 2 inside the graph
            plain, flipped = (session.run(None, {"images": b.numpy()})[0] for b in (batch, flip(batch)))
            np.testing.assert_allclose(flipped, plain, atol=1e-4)
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], model(x).numpy(), atol=1e-4)
    # twice the arithmetic but the final classifier layer (once, on the merged feature): counted from the model
    # config and, independently, from the graph's shapes
    counted = config_flops(info.model, 64)
    plain_flops = config_flops({**info.model, "mirror_average": False}, 64)
    assert counted.views == 2 and counted.classifier == plain_flops.classifier > 0
    assert counted.total(16) == 2 * plain_flops.total(16) - counted.classifier == onnx_graph_flops(fp32)["flops"]


@pytest.mark.parametrize("arch, opset", [("faceode", 18), ("odenet", 17)])  # both exporters: dynamo, TorchScript
def test_two_view_graph_runs_at_any_batch_and_its_flop_count_matches(arch, opset):
    from edgenode.export import onnx_export as ox

    model = build_model(preset_config(arch, 5, width=8))
    for mirror in (False, True):
        graph = ox.torch_to_onnx(unroll(model.with_mirror_average(mirror), "rk4", 2), 64, opset=opset)
        assert graph.exporter.startswith("torch.onnx " + ("dynamo" if opset == 18 else "torchscript"))
        session = ort.InferenceSession(graph.proto.SerializeToString(), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want = unroll(model.with_mirror_average(mirror), "rk4", 2)(x).numpy()
        for batch in (1, 3):  # the dynamic batch survives the (2, -1, D) reshape
            np.testing.assert_allclose(session.run(None, {"images": x[:batch].numpy()})[0], want[:batch], atol=1e-4)
        counted = config_flops(model.with_mirror_average(mirror).config, 64)
        assert counted.classifier > 0 and counted.views == (2 if mirror else 1)
        assert counted.total(8) == onnx_graph_flops(graph.proto)["flops"], (arch, mirror)


def test_parity_compares_mirror_exports_with_a_mirror_averaged_reference(mirror_exports, trained_run, synthetic_root,
                                                                        shared_exports, tmp_path):
    report = run_parity(ParityConfig(artifacts=(str(mirror_exports["fp32"].parent),), reference=str(trained_run.best_checkpoint),
                                     data=str(synthetic_root), attribution=False))
    assert report.passed and report.reference["mirror_average"] is True
    assert any("mirror image" in note for note in report.notes)
    fp32 = next(r for r in report.results if r.precision == "fp32")
    assert fp32.diff.agreement_pct == 100.0 and fp32.diff.max_abs_logit_error < 1e-2
    # the reference's logits are memoised per mirror choice: a plain parity run in the same process gets its own
    from edgenode.parity.run import _REFERENCE_CACHE

    plain = run_parity(ParityConfig(artifacts=(str(shared_exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                                    data=str(synthetic_root), attribution=False))
    assert plain.passed and plain.reference["mirror_average"] is False
    sha = plain.reference["sha256"]
    assert {key[2] for key in _REFERENCE_CACHE if key[0] == sha} == {False, True}
    # a mixed set has no single reference: refused in one line before the slow solve
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src in (mirror_exports["fp32"], shared_exports["fp32"]):
        for name in (src.name, src.name + ".json"):
            shutil.copy(src.parent / name, mixed / name)
    with pytest.raises(UsageError, match="one parity run compares artifacts of one kind"):
        run_parity(ParityConfig(artifacts=(str(mixed),), reference=str(trained_run.best_checkpoint), data=str(synthetic_root)))


def test_attribution_finds_the_fp32_twin_of_the_same_kind(mirror_exports, trained_run, synthetic_root, shared_exports,
                                                           tmp_path):
    """A mirror INT8 file beside a one-view FP32 file: the export and precision stages must not use the latter."""
    folder = tmp_path / "beside"
    folder.mkdir()
    for src in (mirror_exports["int8-ort"], shared_exports["fp32"]):
        for name in (src.name, src.name + ".json"):
            shutil.copy(src.parent / name, folder / name)
    report = run_parity(ParityConfig(artifacts=(str(folder / mirror_exports["int8-ort"].name),),
                                     reference=str(trained_run.best_checkpoint), data=str(synthetic_root)))
    stages = {s.stage: s for s in report.results[0].attribution}
    assert shared_exports["fp32"].name not in stages["export"].b and "rebuilt in memory" in stages["export"].b
    assert stages["export"].diff.max_abs_logit_error < 1e-4  # the mirror twin in torch vs the mirror graph


def test_predictor_mirrors_a_checkpoint_and_refuses_to_change_an_export(trained_run, mirror_exports, shared_exports):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    predictor = load_predictor(trained_run.best_checkpoint, provider="cpu", mirror_average=True)
    assert predictor.metadata.mirror_average
    np.testing.assert_allclose(predictor.predict_logits(x[..., ::-1].copy()), predictor.predict_logits(x), atol=1e-4)
    plain = load_predictor(trained_run.best_checkpoint, provider="cpu")
    assert not plain.metadata.mirror_average
    assert not np.allclose(plain.predict_logits(x[..., ::-1].copy()), plain.predict_logits(x), atol=1e-4)
    assert load_predictor(mirror_exports["fp32"], provider="cpu", mirror_average=True).metadata.mirror_average
    props = ox.read_metadata(mirror_exports["fp32"])  # a key any ONNX viewer shows, not only inside the full record
    assert props["mirror_average"] == "true" and "mirror_average" not in ox.read_metadata(shared_exports["fp32"])
    with pytest.raises(UsageError, match="classifies each picture alone; that is baked into it"):
        load_predictor(shared_exports["fp32"], provider="cpu", mirror_average=True)
    with pytest.raises(UsageError, match="averages each picture with its mirror image; that is baked into it") as info:
        load_predictor(mirror_exports["fp32"], provider="cpu", mirror_average=False)
    assert "re-export the checkpoint without --mirror-average" in str(info.value.hint)


def test_cli_infer_mirror_average(trained_run, shared_exports, synthetic_root, tmp_path):
    from PIL import Image

    pictures = sorted(synthetic_root.glob("images/*/*_000.png"))[:2]
    mirrored = [tmp_path / f"mirrored-{p.name}" for p in pictures]
    for src, dst in zip(pictures, mirrored):
        Image.open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(dst)
    runner = CliRunner()

    def probabilities(*flags) -> np.ndarray:
        result = runner.invoke(app, ["infer", str(trained_run.best_checkpoint), *map(str, pictures + mirrored), "--json",
                                     "--top-k", "6", *flags])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert len(rows) == 4 and ("mirror-averaged" in result.stderr) == bool(flags)
        return np.array([[p["probability"] for p in sorted(r["top_k"], key=lambda t: t["class"])] for r in rows])

    mirror = probabilities("--mirror-average")  # a picture and its mirror image: the same answer
    np.testing.assert_allclose(mirror[:2], mirror[2:], atol=1e-5)
    plain = probabilities()
    assert not np.allclose(plain[:2], plain[2:], atol=1e-5)
    result = runner.invoke(app, ["infer", str(shared_exports["fp32"]), *map(str, pictures), "--mirror-average"])
    assert result.exit_code == 2 and "re-export the checkpoint with --mirror-average" in result.stderr


def test_bench_counts_two_views_for_a_mirror_export(mirror_exports, trained_run):
    from edgenode.bench import BenchConfig, run_bench

    report = run_bench(BenchConfig(artifacts=(str(mirror_exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                                   peak=False, providers="cpu", batch_sizes=(1, 2), repeats=2, warmup=1, threads=1, quiet=True))
    row = next(r for r in report.rows if r.group == "artifact")
    assert row.flops_per_image[2] == onnx_graph_flops(mirror_exports["fp32"])["flops"]
    assert any(note.startswith("mirror-averaged: each picture runs as itself and mirrored") for note in row.notes)
    assert not any("mirror" in note for note in report.rows[0].notes)


def test_bench_says_on_the_console_that_a_mirror_rows_agreement_is_with_the_plain_baseline(mirror_exports, trained_run, tmp_path):
    """Its 97 % agreement reads like a broken export unless the row's note is printed where the table is."""
    result = CliRunner().invoke(app, ["bench", str(mirror_exports["fp32"]), "--reference", str(trained_run.best_checkpoint),
                                      "--no-peak", "--repeats", "1", "--warmup", "0", "--batch-sizes", "1", "--threads", "1",
                                      "--out", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"note: {mirror_exports['fp32'].name}: mirror-averaged: each picture runs as itself and mirrored" in said
    assert "its agreement is with the plain baseline" in said
