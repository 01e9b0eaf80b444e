"""Every document the repository cites is in the repository, and every link into a document resolves.

`find_problems` scans the repository's text files (``git ls-files``, tracked and new; a plain walk outside a git
checkout) for

* citations of documents that live outside the repository: the old design notes file, ``../shared``,
  ``shared/papers`` (the design reference is docs/design.md);
* relative Markdown links ``[text](path#anchor)`` whose file does not exist, or whose anchor is not the
  GitHub-style slug of one of the target's headings;
* mentions of ``docs/NAME.md`` (in code, comments, scripts: relative to the repository root) whose file or
  anchor does not exist.

Each problem names ``path:line``. The first test runs it on this repository; the others plant bad references in
a temporary folder, so the scanner is shown to fail where it should.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Written in two parts so that this file does not cite them itself.
OUTSIDE = ("DESIGN" + ".md", "../" + "shared", "shared/" + "papers", "/work/" + "shared")
BINARY_SUFFIXES = {
    ".safetensors",
    ".npz",
    ".npy",
    ".bin",
    ".pt",
    ".pth",
    ".onnx",
    ".wav",
    ".flac",
    ".mp3",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".pdf",
    ".gz",
    ".zip",
    ".whl",
    ".tar",
    ".pyc",
}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", "runs", "data", "build", "dist"}
MAX_BYTES = 2 << 20

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
_MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_DOCS_MENTION = re.compile(r"(?<![\w/.-])(docs/[\w.-]+?\.md)(?:#([\w-]+))?")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
_INLINE_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_NOT_SLUG = re.compile(r"[^\w\- ]")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower-case, punctuation dropped, spaces -> '-'."""
    text = _INLINE_LINK.sub(r"\1", heading).strip().lower()
    return _NOT_SLUG.sub("", text).replace(" ", "-")


def without_code(text: str) -> list[str]:
    """The lines of Markdown ``text`` with fenced code blocks and inline code spans blanked (line numbers kept)."""
    lines, inside = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            inside = not inside
            lines.append("")
        elif inside:
            lines.append("")
        else:
            lines.append(re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line))
    return lines


def anchors(md_text: str) -> set[str]:
    """The anchors of a Markdown document: its headings' slugs (repeats get -1, -2, ...) and explicit ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    inside = False
    for line in md_text.split("\n"):
        if _FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        found.update(_HTML_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def text_files(root: Path) -> list[Path]:
    """The repository's files (git: tracked and untracked-but-not-ignored; else a walk), minus binaries."""
    if (root / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout.decode()
        paths = sorted({root / p for p in out.split("\0") if p})
    else:
        paths = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            paths += [Path(folder) / f for f in files]
        paths.sort()
    return [
        p for p in paths if p.is_file() and p.suffix.lower() not in BINARY_SUFFIXES and p.stat().st_size <= MAX_BYTES
    ]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


class _Targets:
    """Existence and anchors of link targets, each Markdown file read once."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._anchors: dict[Path, set[str]] = {}

    def problem(self, target: Path, anchor: str | None, shown: str) -> str | None:
        target = Path(os.path.normpath(target))
        if not target.is_relative_to(self.root):
            return f"{shown} points outside the repository"
        if not target.exists():
            return f"{shown}: no such file in the repository"
        if anchor and target.suffix == ".md":
            if target not in self._anchors:
                self._anchors[target] = anchors(target.read_text(encoding="utf-8"))
            if anchor not in self._anchors[target]:
                return f"{shown}: {target.relative_to(self.root)} has no heading with anchor #{anchor}"
        return None


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _link_problems(path: Path, text: str, targets: _Targets) -> list[tuple[int, str]]:
    code_free = "\n".join(without_code(text))
    out = []
    for regex in (_MD_LINK, _MD_REF_LINK):
        for m in regex.finditer(code_free):
            link = m.group(1)
            if _SCHEME.match(link):
                continue
            file_part, _, anchor = link.partition("#")
            base = targets.root if file_part.startswith("/") else path.parent
            target = (base / file_part.lstrip("/")) if file_part else path
            why = targets.problem(target.resolve() if file_part else path.resolve(), anchor or None, f"link ({link})")
            if why:
                out.append((_line_of(code_free, m.start(1)), why))
    return out


def find_problems(root: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every bad reference under ``root`` as ``path:line: what is wrong and what to do``; ``skip``: files not read
    (their headings still count as link targets)."""
    root = root.resolve()
    targets = _Targets(root)
    problems: set[tuple[str, int, str]] = set()
    skipped = {p.resolve() for p in skip}
    for path in text_files(root):
        if path.resolve() in skipped:
            continue
        text = _read(path)
        if text is None:
            continue
        rel = path.resolve().relative_to(root).as_posix()
        for lineno, line in enumerate(text.split("\n"), 1):
            for cited in OUTSIDE:
                if cited in line:
                    problems.add(
                        (
                            rel,
                            lineno,
                            f"cites {cited!r}, which is outside the repository: point to "
                            "docs/design.md (or another document in the repository) instead",
                        )
                    )
            for m in _DOCS_MENTION.finditer(line):
                why = targets.problem(root / m.group(1), m.group(2), f"mention of {m.group(0)}")
                if why:
                    problems.add((rel, lineno, why))
        if path.suffix.lower() == ".md":
            problems.update((rel, n, why) for n, why in _link_problems(path.resolve(), text, targets))
    return [f"{rel}:{n}: {why}" for rel, n, why in sorted(problems)]


# ------------------------------------------------------------------------------------------------ tests
def test_repository_cites_only_documents_inside_it():
    # this file is skipped: its fixtures plant bad references on purpose
    problems = find_problems(REPO, skip=(Path(__file__),))
    assert not problems, "bad document references:\n" + "\n".join(problems)


def test_design_doc_covers_the_items_the_code_points_to():
    have = anchors((REPO / "docs" / "design.md").read_text(encoding="utf-8"))
    wanted = {
        "the-training-loop",
        "data-manifest",
        "the-model-layer",
        "grpo-math",
        "advantages",
        "aggregation",
        "kl-penalty",
        "rewards",
        "text-normalisation",
        "messages-between-actors",
        "weight-sync",
        "checkpoint-layout",
        "decisions-and-why",
    }
    assert wanted <= have, f"docs/design.md lacks sections: {sorted(wanted - have)}"


@pytest.mark.parametrize(
    "slug_of, expected",
    [
        ("The training loop", "the-training-loop"),
        ("5. Cost model: bytes moved per step for a 7B LLM", "5-cost-model-bytes-moved-per-step-for-a-7b-llm"),
        ("5.1 Full-weight sync", "51-full-weight-sync"),
        ("`wer` (R1)", "wer-r1"),
        ("transformers' audio-LLM classes", "transformers-audio-llm-classes"),
        ("See [the loop](#x) here", "see-the-loop-here"),
        ("snake_case and  two spaces", "snake_case-and--two-spaces"),
    ],
)
def test_github_slug_follows_githubs_heading_anchor_rule(slug_of, expected):
    assert github_slug(slug_of) == expected


def test_repeated_headings_get_numbered_anchors_and_fenced_lines_are_not_headings():
    md = '# Intro\n## Setup\n```bash\n# not a heading\n```\n## Setup\n<a id="custom"></a>\n'
    assert anchors(md) == {"intro", "setup", "setup-1", "custom"}


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text, encoding="utf-8")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small repository with one good document and good references to it (no problems)."""
    _write(tmp_path, "docs/design.md", "# Design\n\n## The loop\n\nSee [checkpoints](checkpoints.md#layout).\n")
    _write(tmp_path, "docs/checkpoints.md", "# Checkpoints\n\n## Layout\n")
    _write(
        tmp_path,
        "README.md",
        "Read [the design](docs/design.md#the-loop) and "
        "[the web](https://example.org/x.md#nope).\n\n```python\nf[0](x)\n```\n",
    )
    _write(tmp_path, "pkg/mod.py", '"""The loop: docs/design.md#the-loop."""\n')
    return tmp_path


def test_scanner_finds_nothing_wrong_in_a_tree_whose_references_resolve(tree: Path):
    assert find_problems(tree) == []


@pytest.mark.parametrize("cited", OUTSIDE)
def test_scanner_flags_a_citation_of_a_document_outside_the_repository(tree: Path, cited: str):
    _write(tree, "pkg/other.py", f"x = 1\n# the math is in {cited} section 2\n")
    problems = find_problems(tree)
    assert len(problems) == 1 and problems[0].startswith("pkg/other.py:2: cites "), problems
    assert "docs/design.md" in problems[0]


def test_scanner_flags_a_markdown_link_to_a_missing_file(tree: Path):
    _write(tree, "docs/faults.md", "# Faults\n\nText.\nSee [gone](missing.md) and [up](../../outside.md).\n")
    assert find_problems(tree) == [
        "docs/faults.md:4: link (../../outside.md) points outside the repository",
        "docs/faults.md:4: link (missing.md): no such file in the repository",
    ]


def test_scanner_flags_an_anchor_that_matches_no_heading(tree: Path):
    _write(tree, "docs/x.md", "# X\n\n[ok](design.md#the-loop) [bad](design.md#the-loops) [self](#x) [no](#y)\n")
    assert find_problems(tree) == [
        "docs/x.md:3: link (#y): docs/x.md has no heading with anchor #y",
        "docs/x.md:3: link (design.md#the-loops): docs/design.md has no heading with anchor #the-loops",
    ]


def test_scanner_flags_a_docs_mention_in_code_whose_file_or_anchor_is_missing(tree: Path):
    _write(tree, "pkg/a.py", "# see docs/scaling.md for the numbers\n")
    _write(tree, "scripts/run.sh", "#!/bin/sh\n# docs/design.md#no-such-section\n")
    assert find_problems(tree) == [
        "pkg/a.py:1: mention of docs/scaling.md: no such file in the repository",
        "scripts/run.sh:2: mention of docs/design.md#no-such-section: docs/design.md has no heading with "
        "anchor #no-such-section",
    ]


def test_scanner_reads_links_only_outside_code(tree: Path):
    _write(tree, "docs/y.md", "# Y\n\n```\n[a](nowhere.md)\n```\n\n`[b](nowhere.md)` and [c](nowhere.md)\n")
    assert find_problems(tree) == ["docs/y.md:7: link (nowhere.md): no such file in the repository"]
