"""The whole path on a synthetic data set the package draws itself, in a few minutes on 2 CPU cores.

synthetic faces → split manifest → train (adaptive dopri5) → export FP32/FP16/INT8 (RK4, steps chosen on
the validation split) → parity against the adaptive model on the test split → infer on a few images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgenode.console import console
from edgenode.data import SplitConfig, make_synthetic_faces
from edgenode.train import TrainConfig, TrainResult, train


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
    console.print(f"[bold]2/5[/] training the default NeuralODECNN (dopri5) {'(resuming) ' if resume else ''}→ {run_dir}")
    result: TrainResult = train(
        TrainConfig(
            data=str(data), out=str(run_dir), arch="odenet", width=config.width, epochs=config.epochs, batch_size=16,
            lr=3e-3, schedule="cosine", split=demo_split(config), seed=config.seed, progress=config.progress,
            resume=resume, table_every=0,
        )
    )
    summary = {"train": {"test_accuracy": result.test.get("accuracy"), "best_checkpoint": str(result.best_checkpoint)}}
    return summary
