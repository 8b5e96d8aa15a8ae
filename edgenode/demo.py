"""The whole path on a synthetic data set the package draws itself, in a few minutes on 2 CPU cores.

synthetic faces → split manifest → train (adaptive dopri5) → export FP32/FP16/INT8 (RK4, steps chosen on
the validation split) → parity against the adaptive model on the test split → infer on a few images.
Each stage is the same Python API the CLI commands call; re-running resumes training instead of restarting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgenode.console import console
from edgenode.data import Manifest, SplitConfig, images_root, make_synthetic_faces
from edgenode.export import ExportConfig, export_model
from edgenode.metrics import format_accuracy
from edgenode.parity import ParityConfig, run_parity
from edgenode.runtime import Prediction, load_predictor
from edgenode.train import TrainConfig, train


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    n_classes: int = 10
    per_class: int = 40
    epochs: int = 12
    width: int = 24
    seed: int = 0
    progress: bool = True


def demo_split(config: DemoConfig) -> SplitConfig:
    n_test = max(2, config.per_class // 8)
    n_val = max(2, config.per_class // 5)
    return SplitConfig(per_class=config.per_class, train=config.per_class - n_val - n_test, val=n_val, test=n_test, seed=config.seed)


def run_demo(config: DemoConfig = DemoConfig()) -> dict:
    out = Path(config.out)
    data = out / "data"
    if not (data / "images").is_dir():
        console.print(f"[bold]1/5[/] drawing {config.n_classes} synthetic identities × {config.per_class} images into {data}")
        make_synthetic_faces(data, n_classes=config.n_classes, per_class=config.per_class, seed=config.seed)

    run_dir = out / "train"
    resume = (run_dir / "last.pt").exists()
    console.print(f"[bold]2/5[/] training the default NeuralODECNN (dopri5){' — resuming' if resume else ''} → {run_dir}")
    trained = train(
        TrainConfig(
            data=str(data), out=str(run_dir), arch="odenet", width=config.width, epochs=config.epochs, batch_size=16,
            lr=3e-3, schedule="cosine", split=demo_split(config), seed=config.seed, progress=config.progress,
            resume=resume, table_every=0,
        )
    )

    console.print("[bold]3/5[/] exporting FP32 / FP16 / INT8 ONNX, RK4 steps chosen on the validation split")
    exported = export_model(
        ExportConfig(checkpoint=str(trained.best_checkpoint), out=str(out / "export"), precisions="fp32,fp16,int8", steps="auto", data=str(data))
    )

    console.print("[bold]4/5[/] parity of every artifact against the adaptive-solver model on the test split")
    parity = run_parity(
        ParityConfig(artifacts=(str(exported.out_dir),), reference=str(trained.best_checkpoint), data=str(data), out=str(out / "parity"))
    )

    console.print("[bold]5/5[/] infer: the FP32 ONNX model on a few test images")
    manifest = Manifest.load(run_dir / "manifest.json")
    samples = [images_root(data) / f for f in manifest.files("test")[:: max(1, len(manifest.files("test")) // 5)][:5]]
    predictor = load_predictor(exported.artifacts["fp32"])
    for result in predictor.predict_files(samples, k=1):
        if isinstance(result, Prediction):
            console.print(f"  {Path(result.path).parent.name}/{Path(result.path).name} → {result.label} ({result.confidence:.2f})")

    console.print(
        f"\n[bold]done.[/] test accuracy of the trained model (label-free): "
        f"{format_accuracy(trained.test['accuracy'], trained.test['accuracy_ci'])}; "
        f"{parity.summary_line()}; everything is in {out}/"
    )
    return {"train": trained, "export": exported, "parity": parity}
