"""Training checkpoints: self-describing, written atomically, loaded without unpickling code.

A checkpoint is a plain dict of tensors and JSON-like values saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading a file from elsewhere can never execute code. It carries what
every later stage needs: model config (with the solver), class names, input size and normalisation, the
split manifest's hash, epoch, metrics and — for resuming — optimiser and scheduler state.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgenode import __version__
from edgenode.artifacts import atomic_path, sha256_file
from edgenode.errors import ArtifactError
from edgenode.model import ModelConfig, NeuralODECNN, build_model

CHECKPOINT_FORMAT = "edgenode-checkpoint/1"


@dataclass(frozen=True)
class InputSpec:
    """How raw pictures become model input: travels with every artifact so callers never repeat it."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(int(data["image_size"]), tuple(map(float, data["mean"])), tuple(map(float, data["std"])))


@dataclass
class Checkpoint:
    model_config: ModelConfig
    classes: list[str]
    input_spec: InputSpec
    manifest_sha256: str
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    train_config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    path: Path | None = None
    sha256: str | None = None

    def build_model(self) -> NeuralODECNN:
        model = build_model(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def describe(self) -> dict[str, Any]:
        """Metadata shared with the artifacts exported from this checkpoint."""
        return {
            "classes": list(self.classes),
            "input": self.input_spec.to_dict(),
            "model": self.model_config.to_dict(),
            "manifest_sha256": self.manifest_sha256,
            "source_checkpoint_sha256": self.sha256,
            "epoch": self.epoch,
        }


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "edgenode_version": __version__,
        "model": ckpt.model_config.to_dict(),
        "classes": list(ckpt.classes),
        "input": ckpt.input_spec.to_dict(),
        "manifest_sha256": ckpt.manifest_sha256,
        "epoch": ckpt.epoch,
        "metrics": ckpt.metrics or {},
        "history": ckpt.history or [],
        "train_config": ckpt.train_config or {},
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "optimizer": ckpt.optimizer,
        "scheduler": ckpt.scheduler,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found", "pass the best.pt or last.pt that `edgenode train` wrote")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"{path}: not a readable edgenode checkpoint ({first_line[:160]})",
            "is it an ONNX file or engine? those go to `infer`/`parity` as artifacts",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path}: not an edgenode checkpoint (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    return Checkpoint(
        model_config=ModelConfig.from_dict(payload["model"]),
        classes=list(payload["classes"]),
        input_spec=InputSpec.from_dict(payload["input"]),
        manifest_sha256=payload["manifest_sha256"],
        state_dict=payload["state_dict"],
        epoch=int(payload["epoch"]),
        metrics=payload.get("metrics"),
        history=payload.get("history"),
        train_config=payload.get("train_config"),
        optimizer=payload.get("optimizer"),
        scheduler=payload.get("scheduler"),
        path=path,
        sha256=sha256_file(path),
    )
