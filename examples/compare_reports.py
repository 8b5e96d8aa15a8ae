"""Pair two accuracy reports of one split image by image: which images only one of them gets right, and McNemar.

    python examples/compare_reports.py runs/a/accuracy-report/report.json runs/b/accuracy-report/report.json

Each ``report.json`` is what ``examples/accuracy_report.py`` writes; both must cover the same split of the same
manifest (checked by sha256 and image count). Two accuracies with overlapping intervals can still differ
reliably when the images they disagree on go mostly one way; the exact McNemar test on those images says how
reliably. Prints one line per pair, to paste into RESULTS beside the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgenode.metrics import mcnemar_p


def wrong_files(report: dict) -> set[str]:
    return {m["file"] for m in report["misclassified"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="report.json of the first model (or way of running it)")
    parser.add_argument("b", type=Path, help="report.json of the second")
    args = parser.parse_args()
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (args.a, args.b))
    for key in ("manifest_sha256", "split", "n"):
        if a[key] != b[key]:
            raise SystemExit(f"error: {args.a} and {args.b} differ in {key} ({a[key]!r} vs. {b[key]!r}): "
                             "pair reports of the same split of the same manifest")
    wrong_a, wrong_b = wrong_files(a), wrong_files(b)
    only_a, only_b = len(wrong_b - wrong_a), len(wrong_a - wrong_b)  # images only a / only b gets right
    print(f"{a['split']} ({a['n']} images): accuracy {a['accuracy']:.3f} vs. {b['accuracy']:.3f}; "
          f"only the first right on {only_a}, only the second on {only_b}; exact McNemar p = {mcnemar_p(only_a, only_b):.2g}")


if __name__ == "__main__":
    main()
