"""The README and RESULTS are read more than the code: a link to a renamed section or a moved figure must fail here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "RESULTS.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6} (.*)", line)
        if in_code or not heading:
            continue
        base = github_anchor(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeated headings
    return result


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # commands, not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+://", target)]


def test_github_anchor_matches_githubs_rules():
    assert github_anchor(" Width 160 and colour jitter on the GPU: val rises 1.5 pt, test stays level") == \
        "width-160-and-colour-jitter-on-the-gpu-val-rises-15-pt-test-stays-level"
    assert github_anchor(" The paper's network, measured honestly (Table I)") == "the-papers-network-measured-honestly-table-i"
    assert github_anchor(" `edgenode train --augment`") == "edgenode-train---augment"


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_and_anchor_resolves(doc):
    path = ROOT / doc
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part) if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.relative_to(ROOT)}")
    assert not broken, f"{doc}: broken links:\n" + "\n".join(broken)


def test_every_test_the_guarantees_cite_exists():
    """docs/GUARANTEES.md backs each promise with the tests that hold it: a renamed or deleted test must fail here."""
    cited = set(re.findall(r"`(?:[\w/]+\.py: )?(test_\w+)", (ROOT / "docs" / "GUARANTEES.md").read_text(encoding="utf-8")))
    defined = {name for path in (ROOT / "tests").glob("*.py")
               for name in re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), flags=re.M)}
    files = {path.stem for path in (ROOT / "tests").glob("test_*.py")}
    assert len(cited) > 50 and not cited - defined - files
