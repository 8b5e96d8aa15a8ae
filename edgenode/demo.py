"""The whole path on a synthetic data set the package draws itself, in a few minutes on 2 CPU cores.

synthetic faces → split manifest → train (adaptive dopri5) → export FP32/FP16/INT8 (RK4, steps chosen on
the validation split) → parity against the adaptive model on the test split → infer on a few images.
Each stage is the same Python API the CLI commands call; re-running resumes training instead of restarting.
The data set is drawn once per settings (recorded in ``data/synthetic.json``) and only ever appears complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from edgenode.artifacts import read_json, write_json
from edgenode.console import console, progress_bars_hidden
from edgenode.data import Manifest, SplitConfig, images_root, make_synthetic_faces
from edgenode.errors import EdgenodeError, ParityError, UsageError, is_whole_number
from edgenode.export import ExportConfig, export_model
from edgenode.metrics import format_accuracy
from edgenode.parity import ParityConfig, run_parity
from edgenode.runtime import Prediction, load_predictor
from edgenode.train import TrainConfig, train


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    n_classes: int = 10
    per_class: int = 80  # 20 test images of each identity: see demo_split
    epochs: int = 12
    width: int = 24
    seed: int = 0
    progress: bool = True


DATA_RECORD = "synthetic.json"  # inside the data folder: it is renamed into place together with the images
DATA_FORMAT = "edgenode-demo-data/1"
IMAGE_SIZE = 64
# The default preset pools group-normalised maps, so its logits grow slowly: at 3e-3 the 12-epoch demo ended with
# a train loss of 2.12 (chance: ln 10 = 2.30) and test 0.86 (seed 0); at 1e-2 it fits better (0.90), and the
# drawings of seeds 0, 1 and 2 all pass parity with all four files. (The INT8 failure once put down to the thin
# margins at 3e-3 was 8-bit weights saturating on a CPU without VNNI: RESULTS.md.)
DEMO_LR = 1e-2
# Not --steps auto: on 160 val images, "agrees on ≥ 99.5 %" means "on all of them", and a 2-thread run whose sweep
# chose RK4 × 2 that way disagreed with dopri5 on 2 of its 200 test images, exactly parity's 99 % limit. RK4 × 4, the
# shipped Pins model's, leaves a quarter of × 2's largest logit error on val (0.10 against 0.26).
DEMO_STEPS = 4


def demo_split(config: DemoConfig) -> SplitConfig:
    """A quarter of each identity's images for test, a fifth for val (at least 2 each), the rest to train.

    Parity holds FP32 to a drop of 0.5 pt and 99 % agreement: on the 50 test images of the demo's first settings
    (40 images per identity, 5 of them for test) one flipped answer was 2 pt, and on another CPU (AVX-512 VNNI
    instead of AVX2) the 12-epoch demo failed parity by that one image (RESULTS.md, "The demo"). 80 images per
    identity give parity 200 test images and the step sweep 160 val images, and train a model with wider margins.
    """
    n_test = max(2, config.per_class // 4)
    n_val = max(2, config.per_class // 5)
    return SplitConfig(per_class=config.per_class, train=config.per_class - n_val - n_test, val=n_val, test=n_test, seed=config.seed)


# demo_split keeps at least 2 val + 2 test images per identity, and export calibrates INT8 on 4 train images of each
# (with one, a 1-epoch demo's INT8 file clipped a third of its logits on val and export refused it)
MIN_PER_CLASS = 8


def check_demo_config(config: DemoConfig) -> None:
    """Refuse settings the demo cannot finish with, naming the demo's own flags, before anything is drawn.

    Left to the later stages they fail after the drawing, in words of options the demo does not have
    (``train=-1``) or of a data set it drew itself ("only 1 identity").
    """
    if not is_whole_number(config.n_classes, 2):
        raise UsageError(f"--classes {config.n_classes}: the demo needs at least 2 identities to classify",
                         "pass --classes 2 or more")
    if not is_whole_number(config.per_class, MIN_PER_CLASS):
        raise UsageError(f"--per-class {config.per_class}: too few images per identity: the demo's split keeps 2 "
                         "for validation, 2 for test and 4 to train on, which INT8 export calibrates on",
                         f"pass --per-class {MIN_PER_CLASS} or more")
    if not is_whole_number(config.epochs, 1):
        raise UsageError(f"--epochs {config.epochs}: the demo needs at least 1 epoch", "pass --epochs 1 or more")


def data_settings(config: DemoConfig) -> dict:
    """What the synthetic data set was drawn with: a rerun that asks for other settings must not reuse it."""
    return {"format": DATA_FORMAT, "classes": config.n_classes, "per_class": config.per_class,
            "seed": config.seed, "size": IMAGE_SIZE, "image_format": "png"}


def recorded_settings(data: Path) -> dict | None:
    """The settings recorded beside a drawn data set; None for a folder without a readable record."""
    try:
        record = read_json(data / DATA_RECORD)
    except (EdgenodeError, OSError):
        return None
    return record if isinstance(record, dict) else None


def _describe(settings: dict | None) -> str:
    if settings is None:
        return f"unknown settings, no {DATA_RECORD}: an older or interrupted draw"
    return f"--classes {settings.get('classes')} --per-class {settings.get('per_class')} and seed {settings.get('seed')}"


def draw_data(data: Path, settings: dict) -> None:
    """Draw into a hidden sibling folder and rename it into place once complete.

    A draw killed half-way leaves only a hidden ``.data.*.tmp`` (removed by the next draw), never a folder
    under the final name that a rerun would take for a finished data set and train on.
    """
    data.parent.mkdir(parents=True, exist_ok=True)
    for leftover in data.parent.glob(f".{data.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data.name}.", suffix=".tmp", dir=data.parent))
    old = tmp.with_name(f"{tmp.stem}.old.tmp")
    try:
        make_synthetic_faces(tmp, n_classes=settings["classes"], per_class=settings["per_class"],
                             size=settings["size"], seed=settings["seed"], image_format=settings["image_format"])
        write_json(tmp / DATA_RECORD, settings)
        os.chmod(tmp, 0o755)  # mkdtemp makes owner-only folders; the data set is meant to be shared like any other
        if data.exists() or data.is_symlink():
            os.rename(data, old)  # a folder cannot be replaced in one step: set the stale one aside first
        try:
            os.rename(tmp, data)
        except BaseException:
            if old.exists() and not data.exists():
                os.rename(old, data)  # the stale data set back where it was, not deleted with the new one
            raise
    finally:
        for path in (tmp, old):
            shutil.rmtree(path, ignore_errors=True)


def prepare_data(config: DemoConfig) -> Path:
    """The demo's data set with ``config``'s settings: reused when it has them, else drawn (or redrawn).

    Redrawing under a run that already trained (``train/last.pt``) would resume that run on other data, so
    that is refused instead.
    """
    out = Path(config.out)
    data = out / "data"
    wanted, found = data_settings(config), recorded_settings(data)
    if found == wanted:
        console.print(f"[bold]1/5[/] reusing the synthetic data set in {escape(str(data))}")
        return data
    if data.exists() and (out / "train" / "last.pt").exists():
        raise UsageError(f"--out {out}: holds a demo trained on synthetic data drawn with {_describe(found)}, "
                         f"not {_describe(wanted)}",
                         f"pass another --out, or delete {out} to start over")
    redraw = f", replacing the one drawn with {_describe(found)}" if data.exists() else ""
    console.print(f"[bold]1/5[/] drawing {config.n_classes} synthetic identities × {config.per_class} images into {escape(str(data))}{redraw}")
    draw_data(data, wanted)
    return data


def resumes_training(config: DemoConfig) -> bool:
    """Whether the demo continues the run already in ``out/train``, which must have been started with this
    ``--epochs`` and width: training refuses to resume under others, in words of options the demo lacks."""
    from edgenode.checkpoint import load_checkpoint

    last = Path(config.out) / "train" / "last.pt"
    if not last.exists():
        return False
    saved = load_checkpoint(last).train_config or {}
    changed = [f"{label} {saved[key]} → {now}" for key, label, now in (("epochs", "--epochs", config.epochs),
                                                                          ("width", "width (DemoConfig)", config.width))
               if key in saved and saved[key] != now]
    if changed:
        raise UsageError(f"--out {config.out}: holds a demo trained with other settings ({', '.join(changed)})",
                         f"pass another --out, or delete {last.parent} to train again")
    return True


def run_demo(config: DemoConfig = DemoConfig()) -> dict:
    with progress_bars_hidden(not config.progress):  # --no-progress: export's and parity's bars too, not training's alone
        return _run_demo(config)


def _run_demo(config: DemoConfig) -> dict:
    from edgenode.runtime.providers import require_onnxruntime

    check_demo_config(config)
    require_onnxruntime()  # its export and parity stages need it: say so before the training
    out = Path(config.out)
    resume = resumes_training(config)
    data = prepare_data(config)

    run_dir = out / "train"
    console.print(f"[bold]2/5[/] training the default NeuralODECNN (dopri5){' — resuming' if resume else ''} → {run_dir}")
    trained = train(
        TrainConfig(
            data=str(data), out=str(run_dir), arch="odenet", width=config.width, epochs=config.epochs,
            batch_size=min(16, config.n_classes * demo_split(config).train),  # a tiny demo still takes steps
            lr=DEMO_LR, schedule="cosine", split=demo_split(config), seed=config.seed, progress=config.progress,
            resume=resume, table_every=0,
        )
    )

    console.print(f"[bold]3/5[/] exporting FP32 / FP16 / INT8 ONNX, the ODE block unrolled into RK4 × {DEMO_STEPS}")
    exported = export_model(
        ExportConfig(checkpoint=str(trained.best_checkpoint), out=str(out / "export"), precisions="fp32,fp16,int8", steps=str(DEMO_STEPS), data=str(data))
    )

    console.print("[bold]4/5[/] parity of every artifact against the adaptive-solver model on the test split")
    parity = run_parity(
        ParityConfig(artifacts=(str(exported.out_dir),), reference=str(trained.best_checkpoint), data=str(data), out=str(out / "parity"))
    )

    console.print("[bold]5/5[/] infer: the FP32 ONNX model on a few test images")
    manifest = Manifest.load(run_dir / "manifest.json")
    samples = [images_root(data) / f for f in manifest.files("test")[:: max(1, len(manifest.files("test")) // 5)][:5]]
    with load_predictor(exported.artifacts["fp32"]) as predictor:
        for result in predictor.predict_files(samples, k=1):
            if isinstance(result, Prediction):
                console.print(f"  {Path(result.path).parent.name}/{Path(result.path).name} → {result.label} ({result.confidence:.2f})")

    console.print(
        f"\n[bold]{'done, but parity FAILED.' if parity.failing else 'done.'}[/] test accuracy of the trained model (label-free): "
        f"{format_accuracy(trained.test['accuracy'], trained.test['accuracy_ci'])}; "
        f"{escape(parity.summary_line())}; everything is in {escape(str(out))}/"
    )
    if parity.failing:  # as `edgenode parity` does: an artifact that does not hold its accuracy is never a quiet success
        raise ParityError(parity.failure_line(),
                          f"see {out / 'parity' / 'parity.md'}; more --epochs widen the margins that a fixed-step "
                          f"solve and quantisation must not cross: rerun with them into a new --out (or delete {out / 'train'} first)")
    return {"train": trained, "export": exported, "parity": parity}
