"""Every ```python block of README.md and docs/*.md runs, so documentation examples cannot rot.

Each block runs on its own (fresh globals: a block must work when a reader copies it alone), in a temporary working
directory, with MPLBACKEND=Agg and torch seeded. A block too heavy for CI is skipped only when the last non-blank
line before its fence is `<!-- not run in tests: REASON -->`; such a block still gets its test, reported as skipped
with that reason (`pytest -rs`). Test ids name the file and the line of the fence, e.g. `docs/models.md:42`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = re.compile(r"^<!--\s*not run in tests:\s*(?P<reason>\S.*?)\s*-->$")
LOOKS_LIKE_MARKER = re.compile(r"<!--\s*not run in tests", re.IGNORECASE)
OPEN_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    fence_line: int  # 1-based line of the opening fence
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.path}:{self.fence_line}"


def python_blocks(text: str, path: str) -> list[Block]:
    """The ```python blocks of a markdown text, with their skip markers.

    Fences are tracked whatever their language, so a ```python line inside another fenced block is not a block.
    An unclosed fence, a malformed marker, or a marker not directly above a python block is a ValueError.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    marker_lines: dict[int, str] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith("<!--") and LOOKS_LIKE_MARKER.search(line):
            match = SKIP_MARKER.match(line.strip())
            if not match:
                raise ValueError(f"{path}:{index + 1}: write the marker as `<!-- not run in tests: REASON -->` "
                                 f"(with a reason), got {line.strip()!r}")
            marker_lines[index] = match.group("reason")
        opening = OPEN_FENCE.match(line)
        if not opening:
            index += 1
            continue
        fence, lang = opening.group("fence"), opening.group("lang").lower()
        end = next((j for j in range(index + 1, len(lines))
                    if lines[j].strip().startswith(fence[0] * len(fence)) and not lines[j].strip().strip(fence[0])),
                   None)
        if end is None:
            raise ValueError(f"{path}:{index + 1}: code fence {fence}{lang} is never closed")
        if lang == "python":
            previous = index - 1
            while previous >= 0 and not lines[previous].strip():
                previous -= 1
            reason = marker_lines.pop(previous, None)
            indent = len(opening.group("indent"))
            code = "\n".join(body[indent:] if body[:indent].isspace() else body for body in lines[index + 1:end])
            blocks.append(Block(path, index + 1, code, reason))
        index = end + 1
    if marker_lines:
        first = min(marker_lines)
        raise ValueError(f"{path}:{first + 1}: a `not run in tests` marker must be the line right above a "
                         f"```python fence")
    return blocks


def doc_paths() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def collect() -> list[Block]:
    blocks = []
    for path in doc_paths():
        blocks += python_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    return blocks


BLOCKS = collect()


@pytest.fixture
def doc_environment(tmp_path, monkeypatch):
    """Temp cwd, headless matplotlib, a fixed seed, and torch's global switches restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    grad_enabled, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    torch.manual_seed(0)
    yield tmp_path
    torch.set_grad_enabled(grad_enabled)
    torch.set_default_dtype(dtype)
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_python_block_runs(block: Block, doc_environment):
    if block.skip_reason is not None:
        pytest.skip(f"{block.id} not run in tests: {block.skip_reason}")
    # Padding with blank lines makes a traceback point at the markdown file's own line numbers.
    code = compile("\n" * block.fence_line + block.code, str(ROOT / block.path), "exec")
    exec(code, {"__name__": "__doc_block__"})


def test_the_model_guide_and_readme_have_runnable_blocks():
    # A collector that silently found nothing would make every doc "pass".
    for path in ("README.md", "docs/models.md"):
        runnable = [b for b in BLOCKS if b.path == path and b.skip_reason is None]
        assert runnable, f"no runnable ```python block found in {path}"


def test_block_parser():
    text = "\n".join([
        "intro",                                   # 1
        "```python",                               # 2
        "x = 1",                                   # 3
        "```",                                     # 4
        "````markdown",                            # 5
        "```python",                               # 6: inside another fence, not a block
        "```",                                     # 7
        "````",                                    # 8
        "<!-- not run in tests: needs a GPU -->",  # 9
        "",                                        # 10
        "```python",                               # 11
        "y = 2",                                   # 12
        "```",                                     # 13
        "```bash",                                 # 14
        "echo hi",                                 # 15
        "```",                                     # 16
    ])
    blocks = python_blocks(text, "x.md")
    assert [(b.fence_line, b.code, b.skip_reason) for b in blocks] == [(2, "x = 1", None), (11, "y = 2", "needs a GPU")]
    with pytest.raises(ValueError, match="x.md:1: code fence"):
        python_blocks("```python\nx = 1\n", "x.md")
    with pytest.raises(ValueError, match="with a reason"):
        python_blocks("<!-- not run in tests -->\n```python\nx = 1\n```", "x.md")
    with pytest.raises(ValueError, match="right above"):
        python_blocks("<!-- not run in tests: slow -->\ntext\n```python\nx = 1\n```", "x.md")
