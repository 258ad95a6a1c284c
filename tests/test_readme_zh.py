"""README.zh-CN.md keeps up with README.md: every command and make target, and working links."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_ZH = REPO / "README.zh-CN.md"

SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMMAND = re.compile(r"(?<![\w-])mnist-cnn ([a-z][a-z0-9-]*)")
MAKE = re.compile(r"(?<![\w-])make ([a-z][a-z0-9-]*)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _bare_flags(code: str) -> list[str]:
    """Long flags outside square brackets: part of what the command is (``export --web``)."""
    depth, kept = 0, []
    for ch in code:
        depth += ch == "["
        kept.append(ch if depth == 0 else " ")
        depth -= ch == "]" and depth > 0
    return re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", "".join(kept))


def _code_pieces(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, in a table row or heading) for every code span and fenced code line."""
    out: list[tuple[int, str, bool]] = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        out += [(first + i, ln, False) for i, ln in enumerate(block.group(1).splitlines())]
    fenced = {n for n, _, _ in out}
    for n, line in enumerate(text.splitlines(), 1):
        if n not in fenced:
            row = line.lstrip().startswith(("|", "#"))
            out += [(n, m.group(1).replace("\\|", "|"), row) for m in SPAN.finditer(line)]
    return out


def named_commands(text: str) -> dict[str, tuple[int, tuple[str, ...]]]:
    """What a README names: ``'mnist-cnn export --web'`` or ``'make test'`` -> the first line
    naming it, and the words to find together in one piece of code of the other README.

    A command is its subcommand, plus, in a table row or a heading, the long flags written
    outside square brackets (``mnist-cnn export RUN --web DIR``: ``--web``; ``[--split ...]``:
    optional, left out). A make target counts wherever code shows ``make TARGET``.
    """
    found: dict[str, tuple[int, tuple[str, ...]]] = {}
    for line, code, row in _code_pieces(text):
        for m in COMMAND.finditer(code):
            rest = COMMAND.split(code[m.end() :])[0]  # up to the next command in the same code
            flags = _bare_flags(rest) if row else []
            words = (f"mnist-cnn {m.group(1)}", *flags)
            found.setdefault(" ".join(words), (line, words))
        for m in MAKE.finditer(code):
            found.setdefault(f"make {m.group(1)}", (line, (f"make {m.group(1)}",)))
    return found


def _missing(required: dict[str, tuple[int, tuple[str, ...]]], text: str) -> list[str]:
    pieces = [code for _, code, _ in _code_pieces(text)]
    return [
        name
        for name, (_, words) in required.items()
        if not any(
            all(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", code) for w in words)
            for code in pieces
        )
    ]


def test_every_command_of_the_readme_is_in_the_chinese_readme() -> None:
    required = named_commands(README.read_text(encoding="utf-8"))
    # What this test is for: the tables as they stand name these; losing them is the bug.
    assert {"mnist-cnn train", "mnist-cnn features", "mnist-cnn predict", "make test"} <= set(
        required
    )
    missing = _missing(required, README_ZH.read_text(encoding="utf-8"))
    assert not missing, (
        "README.zh-CN.md does not mention "
        + "; ".join(
            f"`{' … '.join(required[m][1])}` (README.md line {required[m][0]})" for m in missing
        )
        + ": add each to the command table in README.zh-CN.md (commands stay in English)"
    )


def test_the_check_names_a_missing_command_and_its_flag() -> None:
    """A plausible drift: a new table row, or a new flag that makes a new command."""
    english = (
        "| command | what |\n| --- | --- |\n"
        "| `mnist-cnn export RUN --web DIR [--fp16]` | a page |\n"
        "| `mnist-cnn card RUN [-o FILE]` | a card |\n| `make test-fast` | quick |\n"
    )
    required = named_commands(english)
    assert set(required) == {"mnist-cnn export --web", "mnist-cnn card", "make test-fast"}
    chinese = "| 命令 | 作用 |\n| --- | --- |\n| `mnist-cnn export RUN -o model.onnx` | ONNX |\n"
    assert _missing(required, chinese) == [
        "mnist-cnn export --web",
        "mnist-cnn card",
        "make test-fast",
    ]
    chinese += "| `mnist-cnn export RUN --web DIR` | 网页 |\n| `mnist-cnn card RUN` | 卡片 |\n"
    assert _missing(required, chinese + "`make test-fast`\n") == []


def test_readme_links_the_chinese_readme_at_the_top() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:5]
    assert any("(README.zh-CN.md)" in line for line in head), head


def test_chinese_readme_links_resolve() -> None:
    text = README_ZH.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert "README.md" in targets and "docs/tour.ipynb" in targets
    broken = [t for t in targets if not (REPO / t).exists()]
    assert not broken, f"README.zh-CN.md links to missing files: {broken}"
