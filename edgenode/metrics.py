"""Label-free classification metrics: accuracy with a 95 % interval, macro precision/recall/F1."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

Z95 = 1.959963984540054


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; well-behaved near 0 and 1 and for small n."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers on the same images.

    ``only_a``/``only_b``: images that only A (only B) gets right. Overlapping intervals of two accuracies
    on the same test set say little; whether their disagreements lean one way is the paired question.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    accuracy_ci: tuple[float, float]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    n: int

    @classmethod
    def from_predictions(cls, pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> "ClassificationMetrics":
        cm = confusion_matrix(pred, target, num_classes).double()
        tp = cm.diag()
        predicted = cm.sum(0)
        actual = cm.sum(1)
        present = actual > 0  # macro averages over classes that occur in the split
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
        recall = tp / actual.clamp(min=1)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
        correct, n = int(tp.sum()), int(cm.sum())
        return cls(
            accuracy=correct / n if n else 0.0,
            accuracy_ci=wilson_interval(correct, n),
            macro_precision=float(precision[present].mean()) if present.any() else 0.0,
            macro_recall=float(recall[present].mean()) if present.any() else 0.0,
            macro_f1=float(f1[present].mean()) if present.any() else 0.0,
            n=n,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def format_accuracy(accuracy: float, ci: tuple[float, float]) -> str:
    return f"{accuracy:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
