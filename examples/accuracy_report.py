"""`edgenode evaluate`, under the name the commands in RESULTS.md use: an accuracy report of one artifact.

Usage (the same arguments as `edgenode evaluate --help` lists):
    python examples/accuracy_report.py runs/pins-odenet/best.pt ../shared/data/pins --out runs/pins-odenet/report
    python examples/accuracy_report.py best.pt DATA --near-duplicates DATA/near_duplicates.tsv
      (also reports accuracy on the test images that have no near-duplicate of the same identity in train)
    python examples/accuracy_report.py export/model-rk4x4-int8-ort.onnx DATA --manifest run/manifest.json
"""

from __future__ import annotations

import sys

from edgenode.cli.app import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
