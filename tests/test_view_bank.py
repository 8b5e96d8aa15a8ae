"""A bank of the teacher's descriptors of augmented views (``edgenode teacher-views``, ``train --teacher-views``):
the views replay exactly, the student sees the very pixels the teacher described, and its targets are those views'
descriptors. dlib is replaced by a fake recognizer, so none of this needs the teacher extra."""

import json
import shutil

import numpy as np
import pytest
import torch

from edgenode import distill, view_bank
from edgenode.align import ALIGN_FILE
from edgenode.augment import apply_view, augment, draw_view, jitter_colors, shift_pad
from edgenode.checkpoint import InputSpec
from edgenode.errors import ArtifactError, DataError, UsageError
from edgenode.train import DeviceSplit, TrainConfig, train
from tests.helpers import one_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shift, color", [(0.0, 0.0), (0.125, 0.0), (0.0625, 0.4)])
def test_a_drawn_view_replays_what_the_one_step_augmentation_gives_and_draws_alike(shift, color):
    """Seeded training runs must not change: drawing then applying uses the generator as augment + jitter did."""
    x = torch.rand(6, 3, 16, 16)
    one_step, two_step = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = augment(x, one_step, shift)
    expected = jitter_colors(expected, one_step, color) if color else expected
    params = draw_view(6, 16, two_step, shift, color)
    torch.testing.assert_close(apply_view(x, params), expected, rtol=0, atol=0)
    assert torch.rand(1, generator=one_step) == torch.rand(1, generator=two_step)  # the next epoch draws the same


@pytest.mark.parametrize("shift, color, total, row, corner, after", [
    (0.0, 0.0, 1920.782, [0.5898, 0.2073, 0.1456, 0.2316], [0.2314, 0.5007, 0.5967], 0.060116),
    (0.125, 0.0, 1902.224, [0.6501, 0.7343, 0.6501, 0.0207], [0.6843, 0.807, 0.1572], 0.459405),
    (0.0625, 0.4, 2148.417, [0.3259, 0.5398, 0.3259, 0.6001], [0.5944, 0.6729, 0.5727], 0.253957),
])
def test_seeded_augmentation_is_what_it_was_before_views_could_be_replayed(shift, color, total, row, corner, after):
    """Recorded with train.augment / jitter_colors as they were before the draw/apply split (commit cf075eb):
    a seeded run, and every experiment paired with an older one, depends on the same views and generator state."""
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(3)
    y = augment(x, generator, shift)
    y = jitter_colors(y, generator, color) if color else y
    assert float(y.sum()) == pytest.approx(total, abs=2e-3)
    torch.testing.assert_close(y[1, 0, 2, :4], torch.tensor(row), atol=1e-4, rtol=0)
    torch.testing.assert_close(y[4, 2, 9, -3:], torch.tensor(corner), atol=1e-4, rtol=0)
    assert torch.rand(1, generator=generator).item() == pytest.approx(after, abs=1e-6)


def test_a_view_is_the_mirror_and_crop_its_parameters_say():
    x = torch.rand(2, 3, 8, 8)
    params = draw_view(2, 8, torch.Generator().manual_seed(0), shift=0.25)
    params.flip[:] = torch.tensor([True, False])
    params.dy[:], params.dx[:] = torch.tensor([2, 0]), torch.tensor([2, 4])  # pad 2: (2, 2) is the picture itself
    out = apply_view(x, params)
    torch.testing.assert_close(out[0], x[0].flip(2), rtol=0, atol=0)
    torch.testing.assert_close(out[1, :, 2:, :6], x[1, :, :6, 2:], rtol=0, atol=0)  # 2 px down, 2 px left


class FakeRecognizer:
    """Stands in for dlib's ResNet: a 128-d descriptor of the 150x150 chip, and a record of every chip it saw."""

    seen: list = []

    def compute_face_descriptor(self, chip):
        assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
        FakeRecognizer.seen.append(chip.copy())
        small = chip[::19, ::19].astype(np.float32).reshape(-1)[:128]
        return np.concatenate([small, np.zeros(128 - len(small), np.float32)]) / 255 + 0.01


@pytest.fixture()
def fake_teacher(monkeypatch):
    from edgenode import teacher

    FakeRecognizer.seen = []
    monkeypatch.setattr(teacher, "installed_provenance", lambda cnn=False: {"dlib_version": "fake", "model": "fake", "method": "x"})
    monkeypatch.setattr(teacher, "model_files", lambda: ("predictor.dat", "recognizer.dat"))
    monkeypatch.setattr(view_bank, "_worker_init", lambda recognizer: setattr(view_bank, "_RECOGNIZER", FakeRecognizer()))
    return FakeRecognizer


@pytest.fixture()
def chips(synthetic_root, synthetic_manifest, tmp_path):
    """The synthetic data set as an 'aligned copy' of 64-px chips, its manifest, and stored teacher descriptors."""
    data = tmp_path / "chips"
    shutil.copytree(synthetic_root, data)
    (data / ALIGN_FILE).write_text(json.dumps({"align": {"method": "dlib-5pt", "padding": 0.25}, "size": 64}))
    manifest = synthetic_manifest.save(tmp_path / "manifest.json")
    files = [f for split in ("train", "val", "test") for f in synthetic_manifest.files(split)]
    labels = [label for split in ("train", "val", "test") for label in synthetic_manifest.labels(split)]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 128))
    np.savez(tmp_path / "teacher.npz", files=np.array(files), face_detected=np.ones(len(files), bool),
             embedding=(centres[labels] + 0.3 * rng.normal(size=(len(files), 128))).astype(np.float32))
    return data, manifest, synthetic_manifest


def test_the_bank_round_trips_and_describes_each_view_as_drawn(fake_teacher, chips, tmp_path):
    data, _, manifest = chips
    files = manifest.files("train")[:5]
    bank = view_bank.compute_view_bank(data, files, views=3, shift=0.125, color=0.4, seed=1, workers=1, progress=False)
    assert bank.embedding.shape == (3, 5, 128) and bank.pad == 8
    loaded = view_bank.load_view_bank(view_bank.save_view_bank(tmp_path / "bank.npz", bank))
    assert loaded.describe() == "3 views of 5 pictures (64 px, --augment-shift 0.125, --augment-color 0.4)"
    assert loaded.provenance["alignment"] == "dlib-5pt" and "method" not in loaded.provenance
    np.testing.assert_array_equal(loaded.embedding, bank.embedding)
    # the teacher saw picture i's view v (one chip per view, picture after picture): exactly what gather replays
    split = DeviceSplit(*_arrays(data, manifest, files), InputSpec(64, (0.0,) * 3, (1.0,) * 3), torch.device("cpu"), 0.125, 0.4)
    split.bank, split.bank_rows = loaded, torch.from_numpy(loaded.rows(files))
    for i in range(5):
        for v in range(3):
            x, _ = split.batch(torch.tensor([i]), torch.Generator(), view=torch.tensor([v]))
            described = fake_teacher.seen[3 * i + v]
            np.testing.assert_array_equal(_teacher_input(x[0]), described)
    assert not np.array_equal(fake_teacher.seen[0], fake_teacher.seen[1])  # views differ


def _arrays(data, manifest, files):
    from edgenode.data import load_split_arrays

    images, labels = load_split_arrays(manifest, data, "train")
    return images[: len(files)], labels[: len(files)]


def _teacher_input(view: torch.Tensor) -> np.ndarray:
    from PIL import Image

    pixels = (view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((150, 150), Image.Resampling.BILINEAR))


def test_view_targets_are_centred_like_the_stored_ones_and_replace_them():
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(4, 8)).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    teacher = distill.TeacherEmbeddings(np.array([f"f{i}" for i in range(4)]), stored, np.ones(4, bool), {}, "t.npz")
    targets, _ = distill.build_targets(teacher, [f"f{i}" for i in range(4)], labels, [], 2, torch.device("cpu"))
    views = rng.normal(size=(2, 4, 8)).astype(np.float16) + 3.0  # a shift common to every view
    images = rng.integers(0, 256, size=(4, 2, 2, 3), dtype=np.uint8)
    bank = view_bank.ViewBank(np.array(["f3", "f2", "f1", "f0"]), 8, 0.0, 0.0, 0, np.zeros((2, 4), bool), 0,
                              np.zeros((2, 4), np.int16), np.zeros((2, 4), np.int16), None, None, views[:, ::-1].copy(),
                              np.array([view_bank.pixels_crc32(im) for im in images[::-1]], dtype=np.uint32))
    rows = view_bank.bank_rows_for(bank, [f"f{i}" for i in range(4)], images)
    assert rows.tolist() == [3, 2, 1, 0]
    distill.attach_view_bank(targets, bank, rows, n_train=3)
    index, view = torch.tensor([0, 2]), torch.tensor([1, 0])
    centre = views[:, :3].astype(np.float32).reshape(-1, 8).mean(0)  # the views' own mean over the train images
    expected = distill.unit(np.stack([views[1, 0], views[0, 2]]).astype(np.float32) - centre)
    np.testing.assert_allclose(targets.target_embedding(index, view).numpy(), expected, atol=1e-6)
    features = torch.from_numpy(expected) * 2.0
    logits = targets.teacher_log_probs(index, view)
    assert distill.distill_loss(features, logits, index, targets, 1.0, 1.0, view=view).abs() < 1e-5
    assert distill.distill_loss(features, logits, index, targets, 1.0, 1.0) > 1e-2  # the stored targets differ


def test_training_distils_the_views_and_records_the_bank(fake_teacher, chips, tmp_path, monkeypatch):
    data, manifest_path, manifest = chips
    views_seen = []
    real_loss = distill.distill_loss

    def recording_loss(*args, view=None, **kwargs):
        views_seen.append(view)
        return real_loss(*args, view=view, **kwargs)

    monkeypatch.setattr(distill, "distill_loss", recording_loss)
    bank = view_bank.compute_view_bank(data, manifest.files("train"), views=2, shift=0.125, color=0.0, workers=1, progress=False)
    view_bank.save_view_bank(tmp_path / "bank.npz", bank)
    config = dict(data=str(data), arch="faceode", width=8, epochs=1, batch_size=16, manifest=str(manifest_path), progress=False,
                  table_every=0, teacher=str(tmp_path / "teacher.npz"), augment=True)
    with_views = train(TrainConfig(out=str(tmp_path / "views"), teacher_views=str(tmp_path / "bank.npz"), **config))
    assert len(views_seen) == 6 and set(torch.cat(views_seen).tolist()) == {0, 1}  # each step, one view per image
    views_seen.clear()
    without = train(TrainConfig(out=str(tmp_path / "plain"), **config))
    assert views_seen == [None] * 6
    summary = json.loads((tmp_path / "views" / "results.json").read_text())["teacher"]
    assert summary["teacher_views"].endswith("bank.npz") and summary["teacher_views_count"] == 2
    # same seed, same batches and weights at the start: only the views and their targets differ
    assert with_views.history[0]["train_distill_loss"] != pytest.approx(without.history[0]["train_distill_loss"], rel=1e-3)


def test_a_bank_of_other_views_or_other_images_is_refused(fake_teacher, chips, tmp_path):
    data, manifest_path, manifest = chips
    config = dict(data=str(data), arch="faceode", width=8, epochs=1, batch_size=16, manifest=str(manifest_path), progress=False,
                  teacher=str(tmp_path / "teacher.npz"), augment=True, teacher_views=str(tmp_path / "bank.npz"))
    bank = view_bank.compute_view_bank(data, manifest.files("train")[:10], views=1, shift=0.0625, color=0.0, workers=1, progress=False)
    view_bank.save_view_bank(tmp_path / "bank.npz", bank)
    with pytest.raises(UsageError) as exc:
        train(TrainConfig(out=str(tmp_path / "a"), **config))
    one_line(exc, "bank.npz", "--augment-shift 0.0625", "--augment-shift 0.125", "edgenode teacher-views")
    with pytest.raises(UsageError) as exc:
        train(TrainConfig(out=str(tmp_path / "b"), augment_shift=0.0625, **config))
    one_line(exc, "bank.npz", "no views of 86 of the 96 training images", "edgenode teacher-views")
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()


def test_a_bank_of_other_pixels_is_refused(fake_teacher, chips, tmp_path):
    """A GPU pack re-encodes the chips as JPEG: the teacher described other pictures than training would show."""
    from PIL import Image

    data, manifest_path, manifest = chips
    bank = view_bank.compute_view_bank(data, manifest.files("train"), views=1, shift=0.125, color=0.0, workers=1, progress=False)
    view_bank.save_view_bank(tmp_path / "bank.npz", bank)
    victim = data / "images" / manifest.files("train")[3]
    Image.open(victim).convert("RGB").save(victim, format="JPEG", quality=90)  # the same name, other pixels
    with pytest.raises(DataError) as exc:
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="faceode", width=8, epochs=1, batch_size=16,
                          manifest=str(manifest_path), progress=False, teacher=str(tmp_path / "teacher.npz"), augment=True,
                          teacher_views=str(tmp_path / "bank.npz")))
    one_line(exc, "bank.npz", "1 of the 96 training images", manifest.files("train")[3], "edgenode teacher-views")


def test_a_bank_needs_aligned_chips(fake_teacher, synthetic_root, synthetic_manifest):
    with pytest.raises(DataError) as exc:
        view_bank.compute_view_bank(synthetic_root, synthetic_manifest.files("train")[:2], views=1, shift=0.125, color=0.0,
                                    workers=1, progress=False)
    one_line(exc, str(synthetic_root), "not an aligned copy", "edgenode align")


def test_another_data_sets_manifest_is_named_before_any_work(fake_teacher, chips):
    """Every picture missing said "could not be read ... re-align the data set", after the worker pool had run."""
    data, _, _ = chips
    files = ["Someone Else/pic_000.png", "Someone Else/pic_001.png"]
    with pytest.raises(DataError) as exc:
        view_bank.compute_view_bank(data, files, views=1, shift=0.125, color=0.0, workers=1, progress=False)
    one_line(exc, "holds none of the manifest's 2 pictures to describe", "'Someone Else/pic_000.png'", "not the data folder")
    assert fake_teacher.seen == []


@pytest.mark.parametrize("overrides, fragment", [
    ({"augment": True}, "needs --teacher"),
    ({"teacher": "t.npz"}, "and --augment"),
    ({"teacher": "t.npz", "augment": True, "kd_targets": "k.npz"}, "--teacher-views and --kd-targets"),
])
def test_bad_view_bank_options_are_refused_up_front(overrides, fragment):
    with pytest.raises(UsageError, match=fragment):
        TrainConfig(data="d", arch="faceode", teacher_views="bank.npz", **overrides)


def test_a_damaged_or_foreign_bank_is_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "teacher.npz", files=np.array(["a"]), embedding=np.zeros((1, 128), np.float32))
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "teacher.npz")
    one_line(exc, "teacher.npz", "not a view bank", "edgenode teacher-views")
    bank = view_bank.ViewBank(np.array(["f0"]), 8, 0.0, 0.0, 0, np.zeros((1, 1), bool), 0, np.zeros((1, 1), np.int16),
                              np.zeros((1, 1), np.int16), None, None, np.zeros((1, 1, 8), np.float16),
                              np.zeros(1, np.uint32), provenance=["not", "a", "dict"])
    view_bank.save_view_bank(tmp_path / "odd.npz", bank)  # its provenance a JSON list: dict() of it was a traceback
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "odd.npz")
    one_line(exc, "odd.npz", "damaged view bank", "provenance is a JSON list", "edgenode teacher-views")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "junk.npz")
    one_line(exc, "junk.npz", "not a readable view bank")


def test_teacher_views_cli_writes_a_bank_and_will_not_overwrite_another_file(fake_teacher, chips, tmp_path):
    """A bank is written; an --out that holds another .npz (the teacher's descriptors) is refused and left as it was."""
    from typer.testing import CliRunner

    from edgenode.cli.app import app

    data, manifest_path, manifest = chips
    args = ["teacher-views", str(data), "--manifest", str(manifest_path), "--views", "2", "--augment-shift", "0.0625",
            "--workers", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bank.npz")])
    assert result.exit_code == 0, result.output
    assert "2 views of 96 pictures (64 px, --augment-shift 0.0625)" in result.output
    assert view_bank.load_view_bank(tmp_path / "bank.npz").rows(manifest.files("train")).min() == 0
    before = (tmp_path / "teacher.npz").read_bytes()
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "teacher.npz")])  # teacher descriptors, not a bank
    assert result.exit_code != 0 and "teacher.npz" in result.output
    assert (tmp_path / "teacher.npz").read_bytes() == before, "the teacher's descriptors were overwritten"
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.npz"), "--near-duplicates", str(manifest_path)])
    assert result.exit_code == 2 and "--near-duplicates is only used" in result.output


def test_resume_refuses_a_teacher_file_rewritten_since_the_run_started(chips, tmp_path):
    data, manifest_path, _ = chips
    config = dict(data=str(data), out=str(tmp_path / "run"), arch="faceode", width=8, batch_size=16, progress=False,
                  manifest=str(manifest_path), teacher=str(tmp_path / "teacher.npz"), table_every=0)
    train(TrainConfig(epochs=1, **config))
    with np.load(tmp_path / "teacher.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "teacher.npz", **{**arrays, "embedding": arrays["embedding"] * 1.01})  # same name, new targets
    with pytest.raises(UsageError) as exc:
        train(TrainConfig(epochs=2, resume=True, **config))
    one_line(exc, "--resume", "run/last.pt", "--teacher", "teacher.npz", "sha256", "restore the files")


def test_a_run_with_a_view_bank_resumes_exactly(fake_teacher, chips, tmp_path, monkeypatch):
    """The views each epoch shows come from the (seed, epoch) generator: two epochs in one go or with a stop between
    them (the resumed call training epoch 2 only) end at the same weights."""
    import edgenode.train as train_module
    from edgenode.checkpoint import load_checkpoint

    data, manifest_path, manifest = chips
    bank = view_bank.compute_view_bank(data, manifest.files("train"), views=3, shift=0.125, color=0.0, workers=1, progress=False)
    view_bank.save_view_bank(tmp_path / "bank.npz", bank)
    config = dict(data=str(data), arch="faceode", width=8, batch_size=16, progress=False, table_every=0,
                  manifest=str(manifest_path), teacher=str(tmp_path / "teacher.npz"), augment=True,
                  teacher_views=str(tmp_path / "bank.npz"))
    straight = train(TrainConfig(out=str(tmp_path / "straight"), epochs=2, **config))
    train(TrainConfig(out=str(tmp_path / "split"), epochs=1, **config))
    trained, original = [], train_module.run_epoch
    monkeypatch.setattr(train_module, "run_epoch", lambda *a, **k: trained.append(a[7]) or original(*a, **k))
    resumed = train(TrainConfig(out=str(tmp_path / "split"), epochs=2, resume=True, **config))
    assert trained == [2], "the resumed call did not continue after epoch 1"  # retraining from 1 gives the same weights
    expected, actual = (load_checkpoint(r.last_checkpoint).state_dict for r in (straight, resumed))
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)


def test_any_shift_moves_a_small_picture_by_at_least_one_pixel():
    """--augment-shift 0.0625 on an 8-px chip is half a pixel: a shift asked for is never rounded down to none."""
    assert shift_pad(8, 0.0625) == 1 and shift_pad(8, 0.0) == 0 and shift_pad(64, 0.125) == 8
    assert draw_view(4, 8, torch.Generator().manual_seed(0), shift=0.0625).pad == 1


def _tiny_bank(**changes):
    values = dict(files=np.array(["f0"]), side=8, shift=0.0, color=0.0, seed=0, flip=np.zeros((1, 1), bool), pad=0,
                  dy=np.zeros((1, 1), np.int16), dx=np.zeros((1, 1), np.int16), colors=None, gray=None,
                  embedding=np.zeros((1, 1, 8), np.float16), pixels_crc32=np.zeros(1, np.uint32))
    return view_bank.ViewBank(**{**values, **changes})


@pytest.mark.parametrize("changes, fragment", [
    (dict(shift=0.125, pad=1, dy=np.full((1, 1), 3, np.int16)), "crop offsets outside its padding of 1 px"),
    (dict(colors=np.ones((1, 1, 3), np.float32), gray=np.zeros((1, 1), bool)), "disagree with each other or with its shift and colour"),
])
def test_a_bank_whose_views_do_not_fit_its_own_settings_is_refused(tmp_path, changes, fragment):
    view_bank.save_view_bank(tmp_path / "bank.npz", _tiny_bank(**changes))
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "bank.npz")
    one_line(exc, "bank.npz", "damaged view bank", fragment)


@pytest.mark.parametrize("align, fragment", [
    (None, "--teacher-views .*bank.npz: its views were drawn .* on 8-px chips; this run uses .* on 16-px images"),
    ("dlib-5pt", "--teacher-views .*bank.npz: describes chips aligned with 'dlib-5pt', but d holds unaligned pictures"),
])
def test_a_bank_of_other_chips_is_refused(tmp_path, align, fragment):
    """The same shift and colour are not enough: the bank's chips must be this run's size and alignment."""
    view_bank.save_view_bank(tmp_path / "bank.npz", _tiny_bank(provenance={"alignment": align} if align else {}))
    config = TrainConfig(data="d", arch="faceode", teacher="t.npz", augment=True, augment_shift=0.0,
                         teacher_views=str(tmp_path / "bank.npz"))
    from edgenode.train import check_view_bank

    size = 16 if align is None else 8
    with pytest.raises(UsageError, match=fragment):
        check_view_bank(config, InputSpec(size, (0.0,) * 3, (1.0,) * 3))
    if align is None:  # the bank's own size and no alignment on either side: accepted
        assert check_view_bank(config, InputSpec(8, (0.0,) * 3, (1.0,) * 3)).side == 8


def test_teacher_views_cli_passes_its_seed_and_the_unlabelled_pool(fake_teacher, chips, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgenode.cli.app import app
    from edgenode.data import pool

    data, manifest_path, manifest = chips
    extra = manifest.files("val")[0]  # stands in for a pool picture (this split leaves none unused)
    monkeypatch.setattr(pool, "load_unlabeled_pool", lambda *args: (None, [extra], [], 0))
    result = CliRunner().invoke(app, ["teacher-views", str(data), "--manifest", str(manifest_path), "--views", "1",
                                      "--augment-shift", "0.0625", "--workers", "1", "--seed", "7", "--unlabeled",
                                      "--out", str(tmp_path / "bank.npz")])
    assert result.exit_code == 0, result.output
    bank = view_bank.load_view_bank(tmp_path / "bank.npz")
    assert bank.seed == 7 and bank.rows([extra]).tolist() == [len(manifest.files("train"))]
    expected = view_bank.draw_bank_views(len(bank.files), 1, 64, 0.0625, 0.0, seed=7)[0]
    np.testing.assert_array_equal(bank.dy[0], expected.dy.numpy())


def _tiny_bank(**changes):
    values = dict(files=np.array(["f0"]), side=8, shift=0.0, color=0.0, seed=0, flip=np.zeros((1, 1), bool), pad=0,
                  dy=np.zeros((1, 1), np.int16), dx=np.zeros((1, 1), np.int16), colors=None, gray=None,
                  embedding=np.zeros((1, 1, 8), np.float16), pixels_crc32=np.zeros(1, np.uint32))
    return view_bank.ViewBank(**{**values, **changes})


@pytest.mark.parametrize("shift, pad", [(0.125, 0), (0.125, 2), (0.0, 1)])
def test_a_bank_whose_padding_is_not_its_shifts_is_refused(tmp_path, shift, pad):
    """Training replays a view by padding with the bank's ``pad``: one that is not ``shift_pad(side, shift)`` would
    crop other pixels than the teacher described (the offsets may still fit inside it)."""
    assert pad != shift_pad(8, shift)
    view_bank.save_view_bank(tmp_path / "bank.npz", _tiny_bank(shift=shift, pad=pad))
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "bank.npz")
    one_line(exc, "bank.npz", "damaged view bank", "disagree with each other or with its shift and colour")
    view_bank.save_view_bank(tmp_path / "fits.npz", _tiny_bank(shift=shift, pad=shift_pad(8, shift)))
    assert view_bank.load_view_bank(tmp_path / "fits.npz").pad == shift_pad(8, shift)


@pytest.mark.parametrize("views", [0, -1])
def test_a_bank_of_no_views_is_refused_first(tmp_path, views):
    with pytest.raises(UsageError) as exc:
        view_bank.compute_view_bank(tmp_path / "not-there", ["a.png"], views=views, shift=0.125, color=0.0, workers=1,
                                    progress=False)
    one_line(exc, f"--views {views}", "at least one view per picture", "--views 1 or more")


def test_a_bank_with_non_finite_descriptors_is_refused(tmp_path):
    embedding = np.zeros((1, 1, 8), np.float16)
    embedding[0, 0, 3] = np.nan
    view_bank.save_view_bank(tmp_path / "bank.npz", _tiny_bank(embedding=embedding))
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "bank.npz")
    one_line(exc, "bank.npz", "damaged view bank", "non-finite descriptors")


def test_a_bank_of_another_format_version_is_refused(tmp_path):
    """A newer edgenode's bank may store its views otherwise: read as this version's, they would replay wrongly."""
    import json

    view_bank.save_view_bank(tmp_path / "bank.npz", _tiny_bank())
    with np.load(tmp_path / "bank.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    np.savez(tmp_path / "newer.npz", **{**arrays, "meta": np.asarray(json.dumps({**meta, "format": "edgenode-view-bank/2"}))})
    with pytest.raises(ArtifactError) as exc:
        view_bank.load_view_bank(tmp_path / "newer.npz")
    one_line(exc, "newer.npz", "view bank format 'edgenode-view-bank/2'", "this edgenode reads 'edgenode-view-bank/1'",
             "upgrade edgenode")


def test_a_banks_views_follow_its_seed():
    """The seed is recorded in the bank: the same seed draws the same views, another seed other ones."""
    def drawn(seed):
        views = view_bank.draw_bank_views(40, 2, 64, 0.125, 0.4, seed)
        return [np.concatenate([v.flip.numpy().ravel(), v.dy.numpy().ravel(), v.dx.numpy().ravel(), v.colors.numpy().ravel()])
                for v in views]

    same, again, other = drawn(3), drawn(3), drawn(4)
    assert all(np.array_equal(a, b) for a, b in zip(same, again))
    assert not np.array_equal(same[0], same[1])  # view after view from one generator
    assert not any(np.array_equal(a, b) for a, b in zip(same, other))
