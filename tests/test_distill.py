"""Distillation from teacher descriptors: targets, temperature, loss, the faceode student, and a training run
with an unlabelled pool cleaned of near-duplicates."""

import json
import math

import numpy as np
import pytest
import torch

from edgenode import distill
from edgenode.checkpoint import load_checkpoint
from edgenode.data import SplitConfig, build_manifest, make_synthetic_faces
from edgenode.data.near_duplicates import NearDuplicate, write_near_duplicates
from edgenode.errors import ArtifactError, UsageError
from edgenode.model import build_model, preset_config
from edgenode.teacher import TeacherEmbeddings
from edgenode.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def clusters(n_classes=5, per_class=20, dim=16, noise=0.3, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    embedding = centres[labels] + noise * rng.normal(size=(len(labels), dim)) + offset
    return embedding.astype(np.float32), labels


def test_class_means_are_unit_vectors_that_classify_their_own_cluster():
    embedding, labels = clusters()
    means = distill.class_means(embedding, labels, 5)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, atol=1e-6)
    assert ((distill.unit(embedding) @ means.T).argmax(1) == labels).mean() > 0.95


def test_fitted_scale_is_interior_and_more_confident_for_tighter_clusters():
    tight = distill.fit_scale(*clusters(noise=1.0), 5)
    loose = distill.fit_scale(*clusters(noise=2.0), 5)
    grid = distill.SCALE_GRID
    assert grid[0] < loose < tight < grid[-1]


def test_fitted_scale_scores_each_image_without_itself():
    """Two images per class: with itself in its class mean an image is always right (scale → grid maximum);
    left out, its own mean is just the other image and the fit stays finite."""
    embedding, labels = clusters(n_classes=4, per_class=2, noise=1.5, seed=3)
    cos = distill.unit(embedding) @ distill.class_means(embedding, labels, 4).T
    assert (cos.argmax(1) == labels).all(), "in-sample, every image is nearest its own mean: no finite best scale"
    assert distill.fit_scale(embedding, labels, 4) < distill.SCALE_GRID[-1] / 4


def _teacher(files, embedding):
    return TeacherEmbeddings(np.array(files), embedding, np.ones(len(files), bool), {}, "teacher.npz")


def test_targets_are_centred_on_the_train_mean_and_missing_files_are_masked():
    embedding, labels = clusters(n_classes=3, per_class=10, offset=5.0)
    files = [f"c{label}/{i}.jpg" for i, label in enumerate(labels)]
    train_files, pool_files = files[:24], files[24:] + ["c9/missing.jpg"]
    targets, summary = distill.build_targets(_teacher(files, embedding), train_files, labels[:24], pool_files, 3, CPU)

    assert targets.embedding.shape == (31, 16)
    assert targets.has_target.tolist() == [True] * 30 + [False]
    assert torch.count_nonzero(targets.embedding[-1]) == 0
    centre = embedding[:24].mean(axis=0)
    np.testing.assert_allclose(targets.embedding[27].numpy(), distill.unit(embedding[27:28] - centre)[0], atol=1e-6)
    assert (summary["train_with_target"], summary["pool_with_target"]) == (24, 6)
    assert (summary["train_images"], summary["pool_images"]) == (24, 7)
    assert summary["teacher_train_ncm_accuracy"] > 0.9
    assert targets.scale == summary["teacher_scale"]


def test_a_teacher_of_another_data_set_is_refused():
    embedding, labels = clusters(n_classes=2, per_class=4)
    teacher = _teacher([f"x/{i}.jpg" for i in range(8)], embedding)
    with pytest.raises(UsageError, match="only 0 of 8 train images"):
        distill.build_targets(teacher, [f"y/{i}.jpg" for i in range(8)], labels, [], 2, CPU)


def test_a_teacher_that_misses_a_whole_class_is_refused():
    """Most train images covered, but one class not at all: no KL target could ever point to that class."""
    embedding, labels = clusters(n_classes=3, per_class=10)
    files = [f"c{label}/{i}.jpg" for i, label in enumerate(labels)]
    covered = [i for i, label in enumerate(labels) if label != 2]
    teacher = _teacher([files[i] for i in covered], embedding[covered])
    with pytest.raises(UsageError, match=r"no descriptor for any train image of 1 class\(es\) \(class index 2\)"):
        distill.build_targets(teacher, files, labels, [], 3, CPU)


def _targets(n=4, dim=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    return distill.DistillTargets(unit(torch.randn(n, dim, generator=g)), torch.ones(n, dtype=torch.bool),
                                  unit(torch.randn(classes, dim, generator=g)), 10.0)


def test_loss_vanishes_when_the_student_reproduces_the_teacher():
    targets = _targets()
    index = torch.arange(4)
    features, logits = 3.0 * targets.embedding, targets.teacher_log_probs(index)  # the cosine ignores length
    assert distill.distill_loss(features, logits, index, targets, 1.0, 1.0).abs() < 1e-6
    assert distill.distill_loss(-features, logits.flip(1), index, targets, 1.0, 1.0) > 1.0


def test_loss_weights_scale_their_own_term():
    targets = _targets()
    index = torch.arange(4)
    features, logits = torch.randn(4, 8), torch.randn(4, 3)
    cos_only = distill.distill_loss(features, logits, index, targets, 1.0, 0.0)
    kd_only = distill.distill_loss(features, logits, index, targets, 0.0, 1.0)
    both = distill.distill_loss(features, logits, index, targets, 2.0, 3.0)
    torch.testing.assert_close(both, 2 * cos_only + 3 * kd_only)


def test_images_without_a_target_do_not_count():
    targets = _targets()
    targets.has_target[1] = False
    index = torch.tensor([0, 1])
    features, logits = torch.randn(2, 8), torch.randn(2, 3)
    changed = features.clone()
    changed[1] = -100.0
    a = distill.distill_loss(features, logits, index, targets, 1.0, 1.0)
    b = distill.distill_loss(changed, logits, index, targets, 1.0, 1.0)
    torch.testing.assert_close(a, b)
    none = distill.distill_loss(features.requires_grad_(), logits, torch.tensor([1]), targets, 1.0, 1.0)
    assert none.item() == 0.0
    none.backward()  # still part of the graph: a batch of pool images without targets must not break the step


def test_rows_known_on_the_cpu_give_the_masked_loss_exactly():
    """Training passes the rows with a target (computed on the CPU, so the GPU is never asked); the loss, its
    gradient and the views' targets must be those of the mask path, and a batch with no target still backpropagates."""
    targets = _targets(n=6)
    targets.has_target[[1, 4]] = False
    targets.view_embedding = torch.nn.functional.normalize(torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(5)), dim=2)
    index, view = torch.tensor([4, 0, 1, 3, 5]), torch.tensor([1, 0, 1, 1, 0])
    rows = targets.has_target[index].nonzero().squeeze(1)
    for v, v_rows in ((None, None), (view, view[rows])):
        grads = []
        for kwargs in ({"view": v}, {"view": v_rows, "rows": rows}):
            features = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
            logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
            loss = distill.distill_loss(features, logits, index, targets, 2.0, 3.0, count=4.0, **kwargs)
            loss.backward()
            grads.append((loss.detach(), features.grad))
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
        assert grads[0][1][0].abs().sum() == 0 and grads[0][1][1].abs().sum() > 0  # image 4 has no target, 0 has
    for v in (None, torch.zeros(0, dtype=torch.int64)):  # no image of the batch has a target, with or without views
        features = torch.randn(2, 8).requires_grad_()
        none = distill.distill_loss(features, torch.randn(2, 3), torch.tensor([1, 4]), targets, 1.0, 1.0, count=1.0,
                                    view=v, rows=torch.zeros(0, dtype=torch.int64))
        none.backward()
        assert none.item() == 0.0 and features.grad.abs().sum() == 0


def test_only_a_student_with_teacher_sized_features_can_be_distilled():
    embedding, _ = clusters(dim=128)
    teacher = _teacher([f"a/{i}.jpg" for i in range(len(embedding))], embedding)
    distill.check_student(build_model(preset_config("faceode", num_classes=5, width=8)), teacher)
    with pytest.raises(UsageError, match="--arch faceode"):  # 128-d pooled features, but no embedding head
        distill.check_student(build_model(preset_config("odenet", num_classes=5, width=128)), teacher)
    small = _teacher([f"a/{i}.jpg" for i in range(len(embedding))], embedding[:, :64])
    with pytest.raises(UsageError, match="teacher's descriptors .* are 64-d"):
        distill.check_student(build_model(preset_config("faceode", num_classes=5, width=8)), small)


def test_classifier_starts_at_the_teachers_class_means():
    model = build_model(preset_config("faceode", num_classes=3, width=8)).eval()
    targets = _targets(dim=128)
    distill.init_classifier(model, targets)
    head = model.head[-1]
    torch.testing.assert_close(head.weight.data, targets.class_means)
    assert math.isclose(head.log_scale.exp().item(), 10.0, rel_tol=1e-6)
    torch.testing.assert_close(head(targets.class_means * 2.0), targets.scale * targets.class_means @ targets.class_means.t())


@pytest.mark.parametrize("overrides,fragment", [
    ({"unlabeled": True}, "--unlabeled needs --teacher"),
    ({"teacher": "t.npz", "distill_weight": -1.0}, "--distill-weight"),
    ({"teacher": "t.npz", "label_weight": -1.0}, "--label-weight"),
    ({"label_weight": 0.0}, "--label-weight 0 leaves nothing to learn from"),
    ({"teacher": "t.npz", "label_weight": 0.0, "distill_weight": 0.0, "kd_weight": 0.0}, "--label-weight 0 leaves nothing"),
    ({"teacher": "t.npz", "kd_weight": float("nan")}, "--kd-weight"),
    ({"teacher": "t.npz", "near_duplicates": "pairs.tsv"}, "--near-duplicates is only used"),
    ({"kd_targets": "t.npz"}, "--kd-targets needs --teacher"),
    ({"teacher": "t.npz", "kd_targets": "t.npz", "kd_weight": 0.0}, "--kd-targets is only used by the KL term"),
    ({"teacher": "t.npz", "arch": "odenet"}, "'odenet' preset has no embedding head"),
    ({"teacher": "t.npz", "kd_temperature": 0.0}, r"--kd-temperature must be in \(0, 100\], got 0.0"),
    ({"teacher": "t.npz", "kd_temperature": float("inf")}, "--kd-temperature must be in"),
    ({"kd_temperature": 4.0}, "--kd-temperature 4.0 softens the KL term .* needs --teacher"),
    ({"teacher": "t.npz", "kd_weight": 0.0, "kd_temperature": 4.0}, "needs --teacher and a --kd-weight above 0"),
])
def test_bad_distillation_options_are_refused_up_front(overrides, fragment):
    with pytest.raises(UsageError, match=fragment):
        TrainConfig(data="d", **{"arch": "faceode", **overrides})


@pytest.fixture(scope="module")
def pool_setup(tmp_path_factory):
    """4 identities × 14 images, 10 selected (6/2/2): 16 unused images form the pool; a teacher whose
    descriptors cluster by identity; one unused image declared a near-duplicate of a test image."""
    tmp = tmp_path_factory.mktemp("distill")
    root = make_synthetic_faces(tmp / "data", n_classes=4, per_class=14, size=32, seed=0)
    manifest = build_manifest(root, SplitConfig(per_class=10, train=6, val=2, test=2, image_size=32, seed=0), progress=False)
    manifest.save(tmp / "manifest.json")
    entries = [e for name in ("train", "val", "test") for e in manifest.splits[name]] + list(manifest.unused)
    embedding, _ = clusters(n_classes=4, per_class=1, dim=128, seed=1)
    rng = np.random.default_rng(2)
    vectors = np.stack([embedding[c] + 0.2 * rng.normal(size=128) for _, c in entries]).astype(np.float32)
    np.savez(tmp / "teacher.npz", files=np.array([f for f, _ in entries]), embedding=vectors, face_detected=np.ones(len(entries), bool))
    leak = NearDuplicate(manifest.unused[0][0], manifest.files("test")[0], 2)
    write_near_duplicates(tmp / "pairs.tsv", [leak])
    return tmp, root, manifest


def _pool_config(tmp, root, out, **overrides):
    values = dict(data=str(root), out=str(out), arch="faceode", width=8, epochs=2, batch_size=8, lr=3e-3,
                  manifest=str(tmp / "manifest.json"), progress=False, table_every=0, teacher=str(tmp / "teacher.npz"),
                  unlabeled=True, near_duplicates=str(tmp / "pairs.tsv"), augment=True)
    return TrainConfig(**{**values, **overrides})


def test_distillation_with_an_unlabelled_pool_trains_and_records_it(pool_setup, tmp_path, monkeypatch, capsys):
    """The cleaned pool joins the train split every epoch goes over (unlabelled, its steps included), and the run
    records it, and says so: the train count names the pool apart."""
    import edgenode.train as train_module

    tmp, root, manifest = pool_setup
    epochs, original = [], train_module.run_epoch
    # (split, steps) of each epoch: what is trained on, not only what is recorded
    monkeypatch.setattr(train_module, "run_epoch", lambda *a, **k: epochs.append((a[2], a[8])) or original(*a, **k))
    result = train(_pool_config(tmp, root, tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    pool = len(manifest.unused) - 1  # the near-duplicate of a test image is left out
    assert len(epochs) == 2
    for split, steps in epochs:
        assert len(split) == 24 + pool and int((split.labels_cpu == train_module.UNLABELLED).sum()) == pool
        assert steps == (24 + pool) // 8 > 24 // 8  # batches of 8: the pool adds steps
    assert summary["train_images"] == {"labelled": 24, "unlabelled": pool}
    assert f"train/val/test 24 + {pool} unlabelled/8/8" in capsys.readouterr().err
    assert summary["model"]["arch"] == "faceode" and summary["model"]["solver"]["method"]  # what ran, not the options' None
    assert summary["teacher"]["pool_with_target"] == pool
    assert all(row["train_distill_loss"] > 0 for row in result.history)
    assert load_checkpoint(result.best_checkpoint).model_config.arch == "faceode"


def test_label_weight_zero_learns_from_the_teacher_alone(pool_setup, tmp_path):
    tmp, root, _ = pool_setup
    alone = train(_pool_config(tmp, root, tmp_path / "alone", label_weight=0.0))
    both = train(_pool_config(tmp, root, tmp_path / "both")).history
    for row in alone.history:  # the whole loss is the teacher's terms: no cross-entropy on the labels is added
        assert math.isclose(row["train_loss"], row["train_distill_loss"], rel_tol=1e-6)
    assert all(row["train_loss"] > row["train_distill_loss"] + 0.1 for row in both)
    assert load_checkpoint(alone.best_checkpoint).train_config["label_weight"] == 0.0


def test_distilled_run_resumes_exactly(pool_setup, tmp_path, monkeypatch):
    """Epoch 1, then --resume: only epoch 2 is trained, and it ends at the weights of the two epochs in one go."""
    import edgenode.train as train_module

    tmp, root, _ = pool_setup
    straight = train(_pool_config(tmp, root, tmp_path / "straight"))
    train(_pool_config(tmp, root, tmp_path / "split", epochs=1))
    trained, original = [], train_module.run_epoch
    monkeypatch.setattr(train_module, "run_epoch", lambda *a, **k: trained.append(a[7]) or original(*a, **k))
    resumed = train(_pool_config(tmp, root, tmp_path / "split", resume=True))
    assert trained == [2], "the resumed call did not continue after epoch 1"  # retraining from 1 gives the same weights
    expected = load_checkpoint(straight.last_checkpoint).state_dict
    actual = load_checkpoint(resumed.last_checkpoint).state_dict
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_near_duplicate_table_of_another_layout_is_refused(pool_setup, tmp_path):
    """Paths that name no file of the split (e.g. Kaggle's pins_ prefix against this layout) would clean nothing."""
    tmp, root, manifest = pool_setup
    foreign = NearDuplicate("pins_" + manifest.unused[0][0], "pins_" + manifest.files("test")[0], 0)
    write_near_duplicates(tmp_path / "foreign.tsv", [foreign])
    with pytest.raises(UsageError, match="none of its 1 pairs names a file of this split"):
        train(_pool_config(tmp, root, tmp_path / "run", near_duplicates=str(tmp_path / "foreign.tsv")))


def test_resume_refuses_other_distillation_settings(pool_setup, tmp_path):
    tmp, root, _ = pool_setup
    train(_pool_config(tmp, root, tmp_path / "run", epochs=1))
    with pytest.raises(UsageError, match=r"--unlabeled True → False"):
        train(_pool_config(tmp, root, tmp_path / "run", epochs=2, resume=True, unlabeled=False, near_duplicates=None))
    with pytest.raises(UsageError, match=r"--label-weight 1.0 → 0.0"):
        train(_pool_config(tmp, root, tmp_path / "run", epochs=2, resume=True, label_weight=0.0))
    with pytest.raises(UsageError, match=r"--kd-temperature 1.0 → 4.0"):
        train(_pool_config(tmp, root, tmp_path / "run", epochs=2, resume=True, kd_temperature=4.0))


def test_a_kd_temperature_changes_what_is_trained_and_is_recorded(pool_setup, tmp_path):
    """Same seed, same batches: only the KL term's temperature differs, and the run's record says which."""
    tmp, root, _ = pool_setup
    plain = train(_pool_config(tmp, root, tmp_path / "plain", epochs=1))
    soft = train(_pool_config(tmp, root, tmp_path / "soft", epochs=1, kd_temperature=4.0))
    assert soft.history[0]["train_distill_loss"] != pytest.approx(plain.history[0]["train_distill_loss"], rel=1e-4)
    assert load_checkpoint(soft.best_checkpoint).train_config["kd_temperature"] == 4.0


def test_the_learned_logit_scale_is_not_weight_decayed():
    from edgenode.train import parameter_groups

    model = build_model(preset_config("faceode", num_classes=3, width=8))
    decayed, kept = parameter_groups(model, 0.05)
    assert kept["weight_decay"] == 0.0 and kept["params"] == [model.head[-1].log_scale]
    assert decayed["weight_decay"] == 0.05 and len(decayed["params"]) == len(list(model.parameters())) - 1
    assert len(parameter_groups(build_model(preset_config("odenet", num_classes=3, width=8)), 0.05)) == 1


def test_teacher_log_probs_stay_float32_under_autocast():
    targets = _targets(dim=128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = targets.teacher_log_probs(torch.arange(4))
    assert logits.dtype == torch.float32


def test_two_process_ddp_distillation_matches_single_process(pool_setup, tmp_path):
    """Labelled and pool images split unevenly over the ranks: losses must use the global counts. The launch must
    really train in 2 processes (said once, by rank 0): two single-process runs would match trivially."""
    import os
    import subprocess
    import sys

    tmp, root, manifest = pool_setup
    args = ["--arch", "faceode", "--width", "8", "--epochs", "1", "--batch-size", "8", "--lr", "3e-3", "--manifest",
            str(tmp / "manifest.json"), "--teacher", str(tmp / "teacher.npz"), "--unlabeled", "--near-duplicates",
            str(tmp / "pairs.tsv"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (("single", []), ("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        cmd = [sys.executable, *launcher, "-m", "edgenode", "train", str(root), "--out", str(tmp_path / name), *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    output = done.stderr + done.stdout  # the ddp launch's
    assert "2 processes" in output
    assert output.count("distilling ") == 1 and output.count("test accuracy (best-by-val") == 1  # rank 0 alone
    single, ddp = load_checkpoint(tmp_path / "single" / "last.pt"), load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ddp.history[0]["train_distill_loss"] == pytest.approx(single.history[0]["train_distill_loss"], abs=1e-4)
    assert ddp.history[0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], abs=1e-4)
    from edgenode.data import load_split

    x, _ = load_split(manifest, root, "val")
    with torch.no_grad():
        torch.testing.assert_close(ddp.build_model()(x), single.build_model()(x), rtol=0, atol=2e-3)


# --- stored class probabilities (--kd-targets) ----------------------------------------------------------


def test_stored_log_probs_replace_the_teachers_class_probabilities():
    targets = _targets()
    index = torch.arange(4)
    teacher = targets.teacher_log_probs(index)
    stored = torch.log_softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(5)), dim=1)
    features = targets.embedding
    assert distill.distill_loss(features, teacher, index, targets, 0.0, 1.0).abs() < 1e-6
    targets.log_probs = stored
    torch.testing.assert_close(targets.teacher_log_probs(index), stored)
    assert distill.distill_loss(features, stored, index, targets, 0.0, 1.0).abs() < 1e-6
    assert distill.distill_loss(features, teacher, index, targets, 0.0, 1.0) > 1e-3


def test_kd_targets_are_read_in_the_runs_file_order_and_checked(tmp_path):
    log_probs = np.log(np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32))
    path = distill.save_kd_targets(tmp_path / "t.npz", ["a.jpg", "b.jpg", "c.jpg"], ["x", "y"], log_probs, ["m.pt"])
    np.testing.assert_array_equal(distill.load_kd_targets(path, ["c.jpg", "a.jpg"], ["x", "y"]), log_probs[[2, 0]])
    with pytest.raises(UsageError, match="classes are not this split's"):
        distill.load_kd_targets(path, ["a.jpg"], ["y", "x"])
    with pytest.raises(UsageError, match=r"no row for 1 of the 2 training images \(e.g. 'd.jpg'\)"):
        distill.load_kd_targets(path, ["a.jpg", "d.jpg"], ["x", "y"])
    with pytest.raises(ArtifactError, match="not found"):
        distill.load_kd_targets(tmp_path / "none.npz", ["a.jpg"], ["x", "y"])
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(ArtifactError, match="not a class-probability .npz"):
        distill.load_kd_targets(tmp_path / "bad.npz", ["a.jpg"], ["x", "y"])


@pytest.mark.parametrize("rows,fragment", [
    (np.array([[0.0, -1.0], [2.0, 1.0]]), r"row 0 \(a.jpg\) is not a log-probability vector \(its probabilities sum to 1.368; 2 such"),
    (np.array([[0.7, 0.3], [0.5, 0.5]]), "row 0 .* is not a log-probability vector"),  # probabilities, not their logs
    (np.array([[np.nan, 0.0], [np.log(0.5), np.log(0.5)]]), "row 0 .* is not a log-probability vector"),
    (np.zeros((2, 3)), r"has shape \(2, 3\), not \(2 files, 2 classes\)"),
])
def test_kd_targets_that_are_not_log_probabilities_are_refused(tmp_path, rows, fragment):
    path = distill.save_kd_targets(tmp_path / "t.npz", ["a.jpg", "b.jpg"], ["x", "y"], rows, [])
    with pytest.raises(ArtifactError, match=fragment):
        distill.load_kd_targets(path, ["a.jpg", "b.jpg"], ["x", "y"])


def test_kd_targets_need_a_teacher_descriptor_for_every_training_image(tmp_path):
    targets = _targets()
    targets.has_target[2] = False
    path = distill.save_kd_targets(tmp_path / "t.npz", list("abcd"), list("xyz"), np.full((4, 3), -np.log(3.0)), [])
    with pytest.raises(UsageError, match="no descriptor for 1 of the 4 training images"):
        distill.attach_kd_targets(targets, path, list("abcd"), list("xyz"))
    targets.has_target[2] = True
    distill.attach_kd_targets(targets, path, list("dcba"), list("xyz"))
    torch.testing.assert_close(targets.teacher_log_probs(torch.arange(4)), torch.full((4, 3), -float(np.log(3.0))))


def _teacher_targets_file(tmp, root, manifest, path):
    """The teacher's own class log-probabilities for every training image, stored in shuffled file order."""
    from edgenode.data import load_split_arrays
    from edgenode.teacher import load_teacher
    from edgenode.data.pool import load_unlabeled_pool

    _, pool_files, _, _ = load_unlabeled_pool(manifest, str(root), str(tmp / "pairs.tsv"))
    files = manifest.files("train") + pool_files
    _, labels = load_split_arrays(manifest, str(root), "train")
    targets, _ = distill.build_targets(load_teacher(tmp / "teacher.npz"), manifest.files("train"), labels, pool_files,
                                       len(manifest.classes), CPU)
    log_probs = targets.teacher_log_probs(torch.arange(len(files))).numpy()
    order = np.random.default_rng(0).permutation(len(files))
    return distill.save_kd_targets(path, [files[i] for i in order], manifest.classes, log_probs[order], ["teacher"])


def test_stored_teacher_probabilities_reproduce_the_teachers_run(pool_setup, tmp_path):
    """Row alignment end to end: the teacher's own targets, stored shuffled, must train exactly like the teacher;
    the same rows each moved to another file's place must not (the stored rows are what the KL term uses)."""
    tmp, root, manifest = pool_setup
    path = _teacher_targets_file(tmp, root, manifest, tmp_path / "teacher-kd.npz")
    plain = train(_pool_config(tmp, root, tmp_path / "plain", epochs=1, seed=2))
    stored = train(_pool_config(tmp, root, tmp_path / "stored", epochs=1, seed=2, kd_targets=str(path)))
    for key in ("train_loss", "train_distill_loss", "val_loss"):
        assert stored.history[0][key] == pytest.approx(plain.history[0][key], rel=1e-4), key
    with np.load(path) as z:
        moved = distill.save_kd_targets(tmp_path / "moved-kd.npz", list(z["files"]), list(z["classes"]),
                                        np.roll(z["log_probs"], 1, axis=0), ["teacher, rows moved by one"])
    misaligned = train(_pool_config(tmp, root, tmp_path / "moved", epochs=1, seed=2, kd_targets=str(moved)))
    # 2.92 against 3.15 measured: a run that ignored --kd-targets would give the teacher's run to the last digits
    assert misaligned.history[0]["train_distill_loss"] != pytest.approx(plain.history[0]["train_distill_loss"], rel=1e-2)
    summary = json.loads((tmp_path / "stored" / "results.json").read_text())["teacher"]
    assert summary["kd_targets"] == str(path) and len(summary["kd_targets_sha256"]) == 64
    with pytest.raises(UsageError, match="--kd-targets"):
        train(_pool_config(tmp, root, tmp_path / "stored", epochs=2, resume=True))


def test_an_ensembles_targets_train_a_student_end_to_end(pool_setup, tmp_path):
    """Members trained on the pool set-up → their mean probabilities on train + cleaned pool → a student run, whose
    KL term uses them (not the teacher's probabilities)."""
    from edgenode.data import load_file_arrays
    from edgenode.ensemble import load_members, member_probabilities, training_targets

    tmp, root, manifest = pool_setup
    member_paths = [str(train(_pool_config(tmp, root, tmp_path / f"m{seed}", epochs=1, seed=seed)).best_checkpoint)
                    for seed in (0, 1)]
    members = load_members(member_paths, manifest, str(root))
    files, log_probs, summary = training_targets(members, manifest, str(root), str(tmp / "pairs.tsv"))
    pool = len(manifest.unused) - 1
    assert summary["train"] == 24 and summary["pool"] == pool and len(files) == 24 + pool
    folder = dict(manifest.unused)
    expected = np.mean(log_probs[24:].argmax(1) == [folder[f] for f in files[24:]])
    assert summary["pool_folder_agreement"] == pytest.approx(expected)
    assert manifest.files("test")[0] not in files and manifest.unused[0][0] not in files  # the leak stays out
    np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, atol=1e-5)
    last = files[-1]  # a pool image, scored alone: its row must be its own
    image, _, _ = load_file_arrays(manifest, root, [(last, 0)], "one")
    alone = np.mean(member_probabilities(members, image), axis=0)
    np.testing.assert_allclose(np.exp(log_probs[-1]), alone[0], atol=1e-5)
    path = distill.save_kd_targets(tmp_path / "targets.npz", files, manifest.classes, log_probs, member_paths)
    run = train(_pool_config(tmp, root, tmp_path / "kd", epochs=1, seed=2, kd_targets=str(path)))
    assert run.history[0]["train_distill_loss"] > 0
    # the same run without --kd-targets distils the teacher's probabilities instead (1.51 against 3.15 measured)
    plain = train(_pool_config(tmp, root, tmp_path / "plain", epochs=1, seed=2))
    assert run.history[0]["train_distill_loss"] != pytest.approx(plain.history[0]["train_distill_loss"], rel=0.1)


def test_ensemble_members_of_another_split_are_refused(pool_setup, trained_run):
    from edgenode.ensemble import load_members

    tmp, root, manifest = pool_setup
    with pytest.raises(ArtifactError, match="trained on another split"):
        load_members([str(trained_run.best_checkpoint)], manifest, str(root))


def test_a_members_mirrored_probabilities_average_the_picture_and_its_mirror_image(trained_run):
    """``mirror`` is each member's mean over the picture and its left-right mirror (image width is axis 2 of NHWC),
    as examples/ensemble_accuracy.py --mirror reports it."""
    from edgenode.checkpoint import load_checkpoint
    from edgenode.ensemble import member_probabilities

    member = load_checkpoint(trained_run.best_checkpoint)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    (plain,) = member_probabilities([member], images)
    (flipped,) = member_probabilities([member], np.ascontiguousarray(np.flip(images, axis=2)))
    (mirrored,) = member_probabilities([member], images, mirror=True)
    assert mirrored.dtype == np.float32 and np.allclose(mirrored, (plain + flipped) / 2, atol=1e-6)
    assert not np.allclose(plain, flipped, atol=1e-4)  # the two views differ, so the average is not one of them


def test_weight_average_is_the_elementwise_mean_and_refuses_other_architectures(trained_run, tmp_path):
    import dataclasses

    from edgenode.checkpoint import load_checkpoint, save_checkpoint
    from edgenode.ensemble import average_weights

    first = load_checkpoint(trained_run.best_checkpoint)
    shifted = dataclasses.replace(first, state_dict={k: v + 1.0 if v.is_floating_point() else v
                                                     for k, v in first.state_dict.items()})
    mean = average_weights([first, shifted])
    for key, value in first.state_dict.items():
        expected = value + 0.5 if value.is_floating_point() else value
        torch.testing.assert_close(mean.state_dict[key], expected, msg=key)
    assert mean.optimizer is None and mean.metrics is None and mean.model_config == first.model_config
    mean.build_model()  # load_state_dict is strict: every averaged tensor fits its architecture
    saved = load_checkpoint(save_checkpoint(tmp_path / "avg.pt", mean))
    assert saved.metrics == {} and saved.optimizer is None

    wider = dataclasses.replace(first, model_config=dataclasses.replace(first.model_config, width=first.model_config.width + 1))
    with pytest.raises(ArtifactError, match="architecture differs"):
        average_weights([first, wider])


def test_the_kd_term_is_the_kl_from_teacher_to_student():
    targets = _targets()
    index = torch.arange(4)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    teacher, student = targets.teacher_log_probs(index), torch.log_softmax(logits, dim=1)
    want = (teacher.exp() * (teacher - student)).sum() / 4
    torch.testing.assert_close(distill.distill_loss(targets.embedding, logits, index, targets, 0.0, 1.0), want)


def test_the_kd_term_at_temperature_t_is_t_squared_times_the_kl_of_both_softened():
    """Hinton's distillation: teacher and student probabilities at logits / T, the KL times T²."""
    targets = _targets()  # scale 10
    index = torch.arange(4)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    teacher = torch.log_softmax(10.0 / 4 * targets.embedding @ targets.class_means.t(), dim=1)
    student = torch.log_softmax(logits / 4, dim=1)
    want = 16 * (teacher.exp() * (teacher - student)).sum() / 4
    got = distill.distill_loss(targets.embedding, logits, index, targets, 0.0, 1.0, temperature=4.0)
    torch.testing.assert_close(got, want)
    assert not torch.isclose(got, distill.distill_loss(targets.embedding, logits, index, targets, 0.0, 1.0))


def test_stored_class_probabilities_are_softened_as_logits():
    targets = _targets()
    targets.log_probs = torch.log_softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(3)) * 5, dim=1)
    index = torch.arange(4)
    torch.testing.assert_close(targets.teacher_log_probs(index), targets.log_probs)
    torch.testing.assert_close(targets.teacher_log_probs(index, temperature=2.0), torch.log_softmax(targets.log_probs / 2, dim=1))


def test_teacher_probabilities_are_the_softmax_of_scaled_cosines():
    targets = _targets()  # scale 10
    index = torch.arange(4)
    torch.testing.assert_close(targets.teacher_log_probs(index),
                               torch.log_softmax(10.0 * targets.embedding @ targets.class_means.t(), dim=1))


def test_kd_targets_with_a_row_summing_to_1_01_are_refused(tmp_path):
    rows = np.log(np.array([[0.51, 0.5], [0.5, 0.5]]))
    path = distill.save_kd_targets(tmp_path / "t.npz", ["a.jpg", "b.jpg"], ["x", "y"], rows, [])
    with pytest.raises(ArtifactError, match="row 0 .* is not a log-probability vector"):
        distill.load_kd_targets(path, ["a.jpg", "b.jpg"], ["x", "y"])


def test_the_centre_is_the_mean_of_train_images_with_a_descriptor():
    embedding, labels = clusters(n_classes=3, per_class=10, offset=5.0)
    files = [f"c{label}/{i}.jpg" for i, label in enumerate(labels)]
    targets, _ = distill.build_targets(_teacher(files[1:], embedding[1:]), files, labels, [], 3, CPU)  # train image 0 has none
    centre = embedding[1:].mean(axis=0)
    np.testing.assert_allclose(targets.embedding[5].numpy(), distill.unit(embedding[5:6] - centre)[0], atol=1e-5)


def test_weight_average_of_three_checkpoints_is_their_mean_and_refuses_another_split(trained_run):
    import dataclasses

    from edgenode.checkpoint import load_checkpoint
    from edgenode.ensemble import average_weights

    first = load_checkpoint(trained_run.best_checkpoint)
    members = [dataclasses.replace(first, state_dict={k: v + shift if v.is_floating_point() else v
                                                      for k, v in first.state_dict.items()}) for shift in (0.0, 1.0, 5.0)]
    mean = average_weights(members)
    for key, value in first.state_dict.items():
        torch.testing.assert_close(mean.state_dict[key], value + 2.0 if value.is_floating_point() else value, msg=key)
    other_split = dataclasses.replace(first, manifest_sha256="0" * 64)
    with pytest.raises(ArtifactError, match="its split differs"):
        average_weights([first, other_split])


def test_ensemble_summary_scores_the_mean_probabilities_on_train_and_pool(pool_setup, monkeypatch):
    """No member is trained: their probabilities are given, right on 18 of the 24 train pictures; the targets are the
    logs of their mean, small probabilities included."""
    from edgenode import ensemble
    from edgenode.data import load_split_arrays

    tmp, root, manifest = pool_setup
    labels = load_split_arrays(manifest, str(root), "train")[1]
    wrong = np.arange(len(labels)) >= 18

    def given(members, images, batch_size=128):
        probs = np.full((len(images), 4), 0.1, np.float32)
        probs[np.arange(len(labels)), np.where(wrong, (labels + 1) % 4, labels)] = 0.7
        probs[len(labels):] = [0.9997, 1e-4, 1e-4, 1e-4]  # a confident pool: its small probabilities stay as given
        return [probs, probs]

    monkeypatch.setattr(ensemble, "member_probabilities", given)
    files, log_probs, summary = ensemble.training_targets([], manifest, str(root), str(tmp / "pairs.tsv"))
    assert summary["train"] == 24 and summary["train_accuracy"] == pytest.approx(0.75)
    assert summary["mean_top1_probability_train"] == pytest.approx(0.7)
    assert summary["mean_top1_probability_pool"] == pytest.approx(0.9997)
    np.testing.assert_allclose(np.exp(log_probs), given([], np.zeros((len(files), 1)))[0], rtol=1e-4)


def test_without_a_table_the_pool_leaves_out_dhash_near_duplicates_of_val_and_test_images(pool_setup, monkeypatch):
    """No --near-duplicates: every val, test and unused file is hashed and searched, and the count left out is
    that of the pool's files dropped (a pair found by dHash stands in for a real copy)."""
    from edgenode.data import near_duplicates as nd
    from edgenode.data.pool import load_unlabeled_pool

    tmp, root, manifest = pool_setup
    searched = []
    leak = NearDuplicate(manifest.files("test")[0], manifest.unused[0][0], 1)
    monkeypatch.setattr(nd, "find_near_duplicates", lambda files, hashes, *a, **k: searched.extend(files) or [leak])
    images, files, skipped, left_out = load_unlabeled_pool(manifest, str(root), None)
    unused = [f for f, _ in manifest.unused]
    assert sorted(searched) == sorted(manifest.files("val") + manifest.files("test") + unused)
    assert left_out == 1 and files == unused[1:] and len(images) == len(unused) - 1 and not skipped


def test_only_images_the_teacher_described_get_its_loss(pool_setup, tmp_path, monkeypatch):
    """A picture the teacher has no descriptor for (no face found, or left out of its file) is trained on its label
    alone: a KL to a made-up target would pull the student towards it. Every batch that holds such a picture hands
    the teacher's loss only the others."""
    tmp, root, manifest = pool_setup
    with np.load(tmp / "teacher.npz") as archive:
        files, vectors = archive["files"], archive["embedding"]
    undescribed = set(manifest.files("train")[:4])
    keep = np.array([f not in undescribed for f in files])
    np.savez(tmp_path / "partial.npz", files=files[keep], embedding=vectors[keep], face_detected=np.ones(int(keep.sum()), bool))
    real, rows_seen = distill.distill_loss, []

    def recording(features, logits, index, targets, *args, rows=None, **kwargs):
        rows_seen.append((targets.has_target[index].tolist(), rows.tolist()))
        return real(features, logits, index, targets, *args, rows=rows, **kwargs)

    monkeypatch.setattr(distill, "distill_loss", recording)
    train(_pool_config(tmp, root, tmp_path / "run", teacher=str(tmp_path / "partial.npz"), epochs=1, augment=False))
    assert any(not all(has) for has, _ in rows_seen), "some batch must hold a picture without a descriptor"
    for has, rows in rows_seen:
        assert rows == [i for i, h in enumerate(has) if h]
