"""The README and RESULTS are read more than the code: a link to a renamed section or a moved figure must fail here."""

from __future__ import annotations

import re
import sys
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


# Where commands are written for people to copy: the docs, the shell scripts, and the usage of each example script.
COMMAND_SOURCES = [*DOCS, "docs/GUARANTEES.md", "examples/pretrained/README.md", "examples/pins_pipeline.sh",
                   "examples/gpu/prepare_carry.sh", "examples/gpu/bench_gpu.sh", *sorted(
                       str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*.py"))]
# a command starts a line or a pipeline step, after any environment assignments and wrappers (prose names
# edgenode too: "as edgenode does")
INVOCATION = re.compile(r"^\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+|time\s+|timeout\s+\d+\s+|nohup\s+)*"
                        r"(edgenode|python3?)\s+(\S+)(.*)")


def command_lines(path: Path) -> list[str]:
    """The lines that may hold a command: continuations joined, shell comments cut (`# after installing edgenode
    there` is prose). Markdown: fenced blocks and inline code spans; a script: its lines; Python: its docstrings."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        spans = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        spans += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    elif path.suffix == ".py":
        spans = re.findall(r'"""(.*?)"""', text, flags=re.S)
    else:
        spans = [text]
    lines = []
    for span in spans:
        for line in span.replace("\\\n", " ").splitlines():
            lines.append(re.split(r"(?:^|\s)#\s", line)[0])
    return lines


def cli_options() -> dict[str, set[str]]:
    import typer

    from edgenode.cli.app import app

    commands = typer.main.get_command(app).commands
    return {name: {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
            for name, command in commands.items()}


def script_options(script: Path, cli: dict[str, set[str]]) -> set[str]:
    """An example script's options: its argparse flags, or the command's it hands its arguments to
    (``main(["evaluate", *sys.argv[1:]])``)."""
    source = script.read_text(encoding="utf-8")
    delegated = re.search(r'main\(\["([a-z-]+)", \*sys\.argv\[1:\]\]\)', source)
    if delegated:
        return cli[delegated.group(1)]
    return set(re.findall(r'"(--[a-z0-9][a-z0-9-]*)"', source)) | {"--help"}


def unknown_options(source: str, cli: dict[str, set[str]]) -> list[str]:
    found = []
    for line in command_lines(ROOT / source):
        for step in re.split(r"&&|\|\||[;|(]", line):
            invocation = INVOCATION.match(step)
            if not invocation:
                continue
            program, target, rest = invocation.groups()
            options = re.findall(r"(?<!\S)(--[a-z0-9][a-z0-9-]*)", rest)
            if program == "edgenode":
                if target.startswith("-") or not re.fullmatch(r"[a-z-]+", target):
                    continue  # `edgenode --help`, `edgenode <command>`
                if target not in cli:
                    found.append(f"{source}: no command `edgenode {target}`: {line.strip()}")
                    continue
                known = cli[target]
            elif target.startswith("examples/"):
                script = ROOT / target
                if not script.exists():
                    found.append(f"{source}: no script {target}: {line.strip()}")
                    continue
                known = script_options(script, cli)
            else:
                continue
            found += [f"{source}: {target} has no {option}: {line.strip()}" for option in options if option not in known]
    return found


@pytest.mark.parametrize("source", COMMAND_SOURCES)
def test_every_documented_command_names_options_that_exist(source):
    """A renamed option, command or example script leaves the commands people copy from the docs failing with
    "no such option"; every `edgenode …` and `python examples/….py …` written there must parse its options."""
    found = unknown_options(source, cli_options())
    assert not found, "\n".join(found)


def test_the_documented_command_check_finds_a_stale_option(tmp_path, monkeypatch):
    stale = tmp_path / "stale.md"
    stale.write_text("Run\n```bash\nedgenode export best.pt --precision fp32 \\\n  --int8-samples 64   # old name\n```\n"
                     "and `edgenode infer x.onnx img.jpg --device cuda`, then `python examples/nope.py --x 1`; "
                     "`edgenode frobnicate` is no command. # after installing edgenode there\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = unknown_options("stale.md", cli_options())
    assert any("export has no --int8-samples" in line for line in found), found
    assert any("infer has no --device" in line for line in found), found
    assert any("no script examples/nope.py" in line for line in found), found
    assert any("no command `edgenode frobnicate`" in line for line in found), found
    assert not any("edgenode there" in line for line in found), found
    assert len(found) == 4, found
