"""The docs against the program: every command and flag the Markdown shows must exist and run.

Reads README*.md, docs/**/*.md and benchmarks/*.md and finds each command they show, in fenced
or indented code blocks and in inline code (a span may wrap lines or sit in a table):

- ``mnist-cnn ...`` (also ``python -m mnist_cnn``, ``torchrun ... -m mnist_cnn``): the
  subcommand and every flag must exist in ``cli.build_parser()``, spelled in full; literal values
  of a flag with choices (``--split test|val``) must be among them; a line with no placeholders
  is parsed whole. A flag shown on its own (`` `--shift 1` ``, a table's first column) must be a
  flag of the command the text is about: the last one named above it in the same file.
- ``pip install``: this project is not on a package index, so it is installed from its folder
  (``pip install -e '.[onnx]'``) or a built wheel; extras must exist in pyproject.toml. The CLI's
  help and the package's messages are held to the same rule.
- ``benchmarks/...``, ``scripts/...``, ``docs/...``: the file exists, is started in a way that
  works from a fresh clone after ``make`` (a Python script by ``.venv/bin/python``, not a bare
  ``python`` that lacks the project's packages, unless it needs only the standard library), and
  every flag shown is one it accepts. The slow test runs, per script, the first command shown
  without placeholders exactly as written, from the repository root, in a fresh environment
  (no activated venv, a bare ``python`` on PATH, ``MNIST_CNN_DRY_RUN=1`` so that scripts check
  themselves without the long measurement) and a Python script's ``--help``; each must exit 0.

Each failure names the file and line.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import io
import json
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnist_cnn import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_DIRS = ("benchmarks/", "scripts/", "docs/")
# Scripts that run the command written after them: that command is checked, not as their flags.
WRAPPERS = ("benchmarks/as_avx2.sh",)


def _project() -> tuple[str, set[str]]:
    """pyproject.toml's project name and extras (read by hand: tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
    section = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    extras = set(re.findall(r"^([\w-]+)\s*=", section.group(1), re.M)) if section else set()
    assert name, "pyproject.toml has no project name"
    return name.group(1), extras


PROJECT_NAME, EXTRAS = _project()
CODE_LANGS = {"", "sh", "bash", "shell", "console", "text"}  # blocks that may hold commands


@dataclass(frozen=True)
class Snippet:
    """A piece of code the docs show: where, what, and whether it was inline."""

    file: str
    line: int
    text: str
    inline: bool

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    files = sorted(ROOT.glob("README*.md")) + sorted((ROOT / "docs").rglob("*.md"))
    return files + sorted((ROOT / "benchmarks").glob("*.md"))


def _spans(text: str, first_line: int, file: str) -> Iterator[Snippet]:
    """Inline code spans of a stretch of prose; a span may continue onto the next line."""
    for m in re.finditer(r"(`+)(.+?)\1", text, re.S):
        body = m.group(2)
        if "\n\n" in body:  # an unmatched backtick: not a span across paragraphs
            continue
        line = first_line + text.count("\n", 0, m.start())
        yield Snippet(file, line, " ".join(body.replace("\\|", "|").split()), inline=True)


def snippets(path: Path) -> Iterator[Snippet]:
    """Every code line and inline span of one Markdown file, in document order."""
    file = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    prose: list[str] = []
    prose_start = 1
    i = 0

    def flush() -> Iterator[Snippet]:
        if prose:
            yield from _spans("\n".join(prose), prose_start, file)
            prose.clear()

    def code_lines(block: list[tuple[int, str]]) -> Iterator[Snippet]:
        joined: list[str] = []
        start = 0
        for n, raw in block:
            text = raw.strip()
            if not joined:
                start = n
                text = text.removeprefix("$ ")
            joined.append(text.removesuffix("\\").strip())
            if not text.endswith("\\"):
                yield Snippet(file, start, " ".join(joined), inline=False)
                joined = []

    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            yield from flush()
            marker, lang = fence.group(1), fence.group(2).lower()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                block.append((i + 1, lines[i]))
                i += 1
            if lang in CODE_LANGS:
                yield from code_lines(block)
            i += 1
            continue
        indented = line.startswith("    ") and (i == 0 or not lines[i - 1].strip())
        if indented and not re.match(r"\s*([-*+]|\d+\.)\s", line) and not prose:
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                if lines[i].strip():
                    block.append((i + 1, lines[i]))
                i += 1
            yield from code_lines(block)
            continue
        if not line.strip():
            yield from flush()
        else:
            if not prose:
                prose_start = i + 1
            prose.append(line)
        i += 1
    yield from flush()


def all_snippets() -> list[Snippet]:
    return [s for path in doc_files() for s in snippets(path)]


# --------------------------------------------------------------------------- recognising commands

_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_.|-]*$|\.\.\.|^<.*>$|/path/to")


def _words(text: str) -> list[str] | None:
    """Shell words of one command (up to a pipe, `&&`, `;` or a comment), or None."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars="&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError:
        return None
    for stop in ("|", "&&", ";", ">", "2>&1"):
        if stop in words:
            words = words[: words.index(stop)]
    return words


def is_placeholder(word: str) -> bool:
    return bool(_PLACEHOLDER.search(word.strip("[]"))) or word in ("[", "]")


@dataclass(frozen=True)
class Command:
    kind: str  # "mnist-cnn", "script" or "pip"
    words: list[str]  # mnist-cnn: its arguments; script: the whole command; pip: after install
    launcher: tuple[str, ...] = ()  # mnist-cnn: what starts it (`torchrun --nnodes=2 ... -m`)
    interpreter: str | None = None  # script: how it is started ("python", ".venv/bin/python"...)
    script: str | None = None


def parse_command(text: str) -> Command | None:
    """Recognise a command the project is responsible for; None for anything else."""
    words = _words(text)
    if not words:
        return None
    while words and _ENV.match(words[0]):
        words = words[1:]
    if not words:
        return None
    first = words[0]
    if first.removeprefix(".venv/bin/") == "mnist-cnn":
        return Command("mnist-cnn", words[1:])
    if "-m" in words and words.index("-m") + 1 < len(words):
        at = words.index("-m")
        starter = Path(first).name
        if words[at + 1] == "mnist_cnn" and (starter.startswith("python") or starter == "torchrun"):
            return Command("mnist-cnn", words[at + 2 :], launcher=tuple(words[:at]))
    if Path(first).name in ("pip", "pip3") and "install" in words:
        return Command("pip", words[words.index("install") + 1 :])
    if "pip" in words and "install" in words and Path(first).name.startswith("python"):
        return Command("pip", words[words.index("install") + 1 :])
    interpreter = None
    rest = words
    if Path(first).name.startswith(("python", "bash", "sh")) and len(words) > 1:
        interpreter, rest = first, words[1:]
    if rest and rest[0].startswith(SCRIPT_DIRS) and Path(rest[0]).suffix in (".py", ".sh"):
        return Command("script", words, interpreter=interpreter, script=rest[0])
    return None


# --------------------------------------------------------------------------- the CLI's flags


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PARSER = cli.build_parser()
SUBCOMMANDS = _subparsers(PARSER)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


GLOBAL_OPTIONS = _options(PARSER)
ALL_OPTIONS = {opt for p in SUBCOMMANDS.values() for opt in _options(p)} | set(GLOBAL_OPTIONS)


def _flag_problems(words: list[str], options: dict[str, argparse.Action], name: str) -> list[str]:
    """Unknown flags, and literal values outside a flag's choices."""
    problems = []
    for i, word in enumerate(words):
        token = word.strip("[]")
        if not token.startswith("-") or token == "-" or re.match(r"^-\d", token):
            continue
        flag, _, inline_value = token.partition("=")
        if flag not in options:
            problems.append(f"{name} has no flag {flag}")
            continue
        action = options[flag]
        value = inline_value or (words[i + 1].strip("[]") if i + 1 < len(words) else "")
        if action.choices and value and not value.startswith("-") and not is_placeholder(value):
            wrong = [v for v in value.split("|") if v not in action.choices]
            if wrong:
                problems.append(f"{name} {flag}: {'|'.join(wrong)} is not one of its choices")
    return problems


def check_mnist_command(words: list[str]) -> tuple[str | None, list[str]]:
    """(subcommand, problems) for the arguments of one ``mnist-cnn`` command line."""
    args = [w for w in words if w not in ("[", "]")]
    lead = []
    while args and args[0].startswith("-"):
        lead.append(args.pop(0))
    problems = _flag_problems(lead, GLOBAL_OPTIONS, "mnist-cnn")
    if not args:
        return None, problems
    sub = args[0].strip("[]")
    if is_placeholder(sub) or sub == "...":  # `mnist-cnn COMMAND --help`
        rest = [w for w in args[1:] if w.startswith("-")]
        unknown = [w for w in rest if w.split("=")[0] not in ALL_OPTIONS]
        return None, problems + [f"no mnist-cnn command has the flag {w}" for w in unknown]
    if sub not in SUBCOMMANDS:
        return None, problems + [f"mnist-cnn has no command {sub!r}"]
    parser = SUBCOMMANDS[sub]
    problems += _flag_problems(args[1:], _options(parser), f"mnist-cnn {sub}")
    concrete = len(args) > 1 and not any(
        is_placeholder(w) or w.startswith("[") or "|" in w for w in args
    )
    if concrete and not problems:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                PARSER.parse_args([*lead, *args])
        except SystemExit as exit_:
            if exit_.code:
                problems.append(err.getvalue().strip().splitlines()[-1])
    return sub, problems


# --------------------------------------------------------------------------- scripts


@functools.cache
def script_flags(path: Path) -> tuple[frozenset[str], str | None]:
    """Flags a script accepts (argparse option strings, or what its --help prints), and why not
    when its --help fails."""
    flags = {"-h", "--help"}
    if path.suffix == ".py":
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("-"):
                        flags.add(arg.value)
        return frozenset(flags), None
    env = {**os.environ, "MNIST_CNN_DRY_RUN": "1"}  # should it ignore --help: no long run
    out = subprocess.run(
        [path, "--help"], capture_output=True, text=True, timeout=20, cwd=ROOT, env=env
    )
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return frozenset(flags), f"{path.relative_to(ROOT)} --help failed: {last[0]}"
    flags |= set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", out.stdout))
    return frozenset(flags), None


def needs_only_stdlib(path: Path) -> bool:
    if path.suffix != ".py":
        return True
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(n.split(".")[0] not in sys.stdlib_module_names for n in names):
            return False
    return True


def check_script_command(cmd: Command) -> list[str]:
    assert cmd.script is not None
    path = ROOT / cmd.script
    if not path.is_file():
        return [f"{cmd.script} does not exist"]
    problems = []
    starter = cmd.interpreter
    if starter is None:
        shebang = path.read_text(encoding="utf-8").partition("\n")[0]
        if not os.access(path, os.X_OK) or not shebang.startswith("#!"):
            problems.append(f"{cmd.script} is not executable: show how to start it")
        elif "python" in shebang:
            starter = shebang
    bare_python = starter and "python" in starter and not starter.startswith(".venv/bin/")
    if bare_python and not needs_only_stdlib(path):
        problems.append(
            f"{cmd.script} needs the project's packages, which a fresh clone's python lacks "
            f"(started by {starter!r}): show '.venv/bin/python {cmd.script}'"
        )
    after = cmd.words[cmd.words.index(cmd.script) + 1 :]
    if cmd.script in WRAPPERS:
        inner = parse_command(" ".join(after))
        if inner is None:  # another program's command (`make test`): not ours to check
            return problems
        if inner.kind == "script":
            return problems + check_script_command(inner)
        if inner.kind == "mnist-cnn":
            return problems + check_mnist_command(inner.words)[1]
        return problems + check_pip(inner.words)
    flags, failed = script_flags(path)
    problems += [failed] if failed else []
    problems += [
        f"{cmd.script} has no flag {w.strip('[]').split('=')[0]}"
        for w in after
        if w.strip("[]").startswith("-") and w.strip("[]").split("=")[0] not in flags
    ]
    return problems


def is_mention(s: Snippet, cmd: Command) -> bool:
    """`benchmarks/x.py` alone in running text names the file; it is not a command line."""
    return s.inline and cmd.words == [cmd.script]


def check_pip(words: list[str]) -> list[str]:
    """This project comes from its folder or a wheel, never from a package index by name."""
    problems = []
    for word in words:
        if word.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[([\w,\s-]+)\])?", word)
        if not m:
            continue
        name = m.group(1)
        extras = {e.strip() for e in (m.group(3) or "").split(",") if e.strip()}
        local = name in (".", "..") or name.startswith(("./", "dist/")) or name.endswith(".whl")
        if re.sub(r"[-_.]+", "-", name.lower()) == PROJECT_NAME and not local:
            problems.append(
                f"pip install {word}: {PROJECT_NAME} is not on a package index; install it "
                "from the project's folder (pip install -e '.[EXTRA]') or a built wheel"
            )
        if (local or name == PROJECT_NAME) and extras - EXTRAS:
            problems.append(f"pip install {word}: no extra {sorted(extras - EXTRAS)}")
    return problems


# --------------------------------------------------------------------------- the checks


def doc_problems(items: list[Snippet]) -> list[str]:
    """Every mismatch between the given snippets and the program.

    A flag shown on its own must belong to a command the same file names (``mnist-cnn X`` or a
    script), or appear in another program's command line the file shows (torchrun's
    ``--node_rank``, pip's ``--index-url``).
    """
    problems: list[str] = []
    named: dict[str, dict[str, set[str]]] = {}  # file -> {command: its flags}
    foreign: dict[str, set[str]] = {}  # file -> flags of other programs' command lines
    bare: list[tuple[Snippet, re.Match[str]]] = []
    for s in items:
        cmd = parse_command(s.text)
        if cmd is None:
            # Long flags only: a lone `-m slow` is more likely pytest's than ours.
            m = re.match(r"^(--[a-z][\w-]*)(?:[ =](\S+))?$", s.text) if s.inline else None
            if m:
                bare.append((s, m))
            elif not s.text.startswith("-"):
                words = _words(s.text) or []
                foreign.setdefault(s.file, set()).update(
                    w.split("=")[0] for w in words if w.startswith("-")
                )
            continue
        if cmd.kind == "mnist-cnn":
            foreign.setdefault(s.file, set()).update(
                w.split("=")[0] for w in cmd.launcher if w.startswith("-")
            )
            sub, found = check_mnist_command(cmd.words)
            if sub:
                named.setdefault(s.file, {})[f"mnist-cnn {sub}"] = set(_options(SUBCOMMANDS[sub]))
        elif cmd.kind == "script":
            script = ROOT / str(cmd.script)
            if is_mention(s, cmd):
                found = [] if script.is_file() else [f"{cmd.script} does not exist"]
            else:
                found = check_script_command(cmd)
            if script.is_file():
                named.setdefault(s.file, {})[str(cmd.script)] = set(script_flags(script)[0])
        else:
            found = check_pip(cmd.words)
        problems += [f"{s.where}: `{s.text}`: {p}" for p in found]
    for s, m in bare:
        flag, value = m.group(1), m.group(2)
        owners = [what for what, flags in named.get(s.file, {}).items() if flag in flags]
        if not owners and flag not in foreign.get(s.file, set()):
            what = ", ".join(named.get(s.file, {})) or "no command"
            problems.append(f"{s.where}: `{s.text}`: no command named here ({what}) has {flag}")
        elif owners and value and all(o.startswith("mnist-cnn ") for o in owners):
            wrong = [
                _flag_problems(s.text.split(), _options(SUBCOMMANDS[o.split()[1]]), o)
                for o in owners
            ]
            if all(wrong):
                problems += [f"{s.where}: {p}" for p in wrong[0]]
    return problems


def test_the_docs_show_only_commands_and_flags_that_exist() -> None:
    items = all_snippets()
    shown = [s for s in items if parse_command(s.text)]
    assert len(shown) >= 20, "the Markdown reader found too few commands: is it broken?"
    problems = doc_problems(items)
    assert not problems, "the docs disagree with the program:\n" + "\n".join(problems)


def test_the_cli_and_its_messages_name_an_installable_package() -> None:
    texts = [PARSER.format_help()] + [p.format_help() for p in SUBCOMMANDS.values()]
    for path in sorted((ROOT / "src").rglob("*.py")):
        texts.append(path.read_text(encoding="utf-8"))
    problems = []
    for text in texts:
        for m in re.finditer(r"pip3? install\s+(?:-\S+\s+)*(\S+)", text):
            problems += check_pip([m.group(1).rstrip(",;.)").strip("'\"`")])
    assert not problems, "\n".join(problems)


# A copy of the drifts this test exists for: each must be reported.
DRIFTS = [
    ("`--warmup 0.2`", "(mnist-cnn train) has --warmup", "mnist-cnn train --preset fast"),
    ("`--preset quick`", "quick is not one of its choices", "mnist-cnn train"),
    ("`mnist-cnn train --shfit 1`", "has no flag --shfit", None),
    ("`mnist-cnn trian`", "has no command 'trian'", None),
    ("`mnist-cnn evaluate RUN --split dev`", "dev is not one of its choices", None),
    ("`pip install 'mnist-cnn[onnx]'`", "not on a package index", None),
    ("`pip install -e '.[onxx]'`", "no extra ['onxx']", None),
    ("`python benchmarks/gpu_check.py --out x.json`", "show '.venv/bin/python", None),
    ("`benchmarks/gpu_check.py --smoke`", "is not executable", None),
    ("`.venv/bin/python benchmarks/gpu_check.py --fast`", "has no flag --fast", None),
    ("`benchmarks/no_such.sh`", "does not exist", None),
    (
        "`benchmarks/as_avx2.sh .venv/bin/python benchmarks/gpu_check.py --fast`",
        "benchmarks/gpu_check.py has no flag --fast",
        None,
    ),
    (
        "`benchmarks/as_avx2.sh mnist-cnn bench --stpes 3`",
        "mnist-cnn bench has no flag --stpes",
        None,
    ),
]


@pytest.mark.parametrize(("shown", "expected", "before"), DRIFTS)
def test_each_kind_of_drift_is_reported(shown: str, expected: str, before: str | None) -> None:
    items = [Snippet("x.md", 1, before, inline=True)] if before else []
    items += list(_spans(shown, 2, "x.md"))
    problems = doc_problems(items)
    assert len(problems) == 1 and expected in problems[0] and "x.md:2" in problems[0], problems


def test_the_reader_finds_wrapped_spans_continued_lines_and_indented_blocks() -> None:
    text = (
        "Run `mnist-cnn serve RUN [--host 127.0.0.1]\n[--port 8000]` now.\n\n"
        "```sh\n$ mnist-cnn train \\\n    --steps 5\nserving at http://x\n```\n\n"
        "    benchmarks/fast_preset.sh 0 1 2\n\n"
        "| `--lr` | `mnist-cnn bench --device cpu\\|cuda` |\n"
    )
    path = ROOT / "tests" / ".docs-reader-sample.md"
    try:
        path.write_text(text, encoding="utf-8")
        got = [(s.line, s.text) for s in snippets(path)]
    finally:
        path.unlink(missing_ok=True)
    assert got == [
        (1, "mnist-cnn serve RUN [--host 127.0.0.1] [--port 8000]"),
        (5, "mnist-cnn train --steps 5"),
        (7, "serving at http://x"),
        (10, "benchmarks/fast_preset.sh 0 1 2"),
        (12, "--lr"),
        (12, "mnist-cnn bench --device cpu|cuda"),
    ]


# --------------------------------------------------------------------------- running them


def _fresh_environment(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The repository as a fresh clone after `make` sees it, with nothing activated.

    The checkout's files are linked into a folder whose `.venv` is the project's environment
    (this checkout's own `.venv` when there is one, as in CI; else the one running the tests);
    PATH offers only a bare `python`/`python3` (the base interpreter, without the project's
    packages) and the system's tools.
    """
    root = tmp_path / "clone"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".venv", ".git"):
            (root / entry.name).symlink_to(entry)
    venv = ROOT / ".venv" if (ROOT / ".venv").is_dir() else Path(sys.prefix)
    (root / ".venv").symlink_to(venv)
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    base = Path(getattr(sys, "_base_executable", sys.executable))
    for name in ("python", "python3"):
        (bare / name).symlink_to(base)
    env = {
        "PATH": f"{bare}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        # The environment's editable install may point at another checkout (a worktree): this one
        # is what is under test. It changes nothing for a bare `python` (it still lacks torch).
        "PYTHONPATH": str(ROOT / "src"),
        "MNIST_CNN_DRY_RUN": "1",
        "MPLBACKEND": "Agg",
    }
    if "MNIST_CNN_DATA" in os.environ:
        env["MNIST_CNN_DATA"] = os.environ["MNIST_CNN_DATA"]
    return root, env


def _start(argv: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so that a stuck one is stopped with all it started
    )


def _python_run(line: str) -> dict | None:
    """``[NAME=VALUE ...] .venv/bin/python SCRIPT.py ARGS`` as what the runner needs; None
    for any other command line (it runs through bash)."""
    words = shlex.split(line)
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if len(words) < 2 or words[0] != ".venv/bin/python" or not words[1].endswith(".py"):
        return None
    if any(c in w for w in words for c in "|&;<>()$`*?"):
        return None
    return {"env": env, "script": words[1], "args": words[2:]}


# Runs each script as `python SCRIPT ARGS` would, in this one process: its folder first on
# sys.path, its own argv and environment, `__main__`; prints the exit codes (and each failure's
# last lines) as JSON on the last line.
_RUNNER = """
import contextlib, io, json, os, runpy, sys, traceback
codes = []
for run in json.loads(sys.argv[1]):
    environ, path = dict(os.environ), list(sys.path)
    os.environ.update(run["env"])
    sys.argv = [run["script"], *run["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(run["script"]))
    out = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(run["script"], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            out.write(str(e.code))
            code = 1
    except BaseException:
        out.write(traceback.format_exc())
        code = 1
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
    codes.append([code, " | ".join(out.getvalue().strip().splitlines()[-3:])])
print(json.dumps(codes))
"""


@pytest.mark.slow
def test_script_commands_run_as_shown_from_a_fresh_clone(tmp_path: Path) -> None:
    runs: dict[str, Snippet] = {}  # command line -> where it is first shown
    helps: dict[str, Snippet] = {}  # python script -> where it is first shown
    for s in all_snippets():
        cmd = parse_command(s.text)
        if cmd is None or cmd.kind != "script" or not (ROOT / str(cmd.script)).is_file():
            continue
        words = cmd.words
        if is_mention(s, cmd) or any(is_placeholder(w) or w.startswith("[") for w in words):
            if str(cmd.script).endswith(".py"):
                helps.setdefault(str(cmd.script), s)
        elif all(cmd.script not in line for line in runs):  # one run per script is enough
            runs.setdefault(shlex.join(_words(s.text) or []), s)
    assert runs, "no script command without placeholders found: is the reader broken?"
    root, env = _fresh_environment(tmp_path)
    failures = []
    # The Python scripts' runs in one process of the clone's interpreter, one after another
    # (each is mostly torch's import: once is enough); the rest all at once through bash.
    batch = {line: run for line in runs if (run := _python_run(line)) is not None}
    procs = {line: _start(["bash", "-c", line], root, env) for line in runs if line not in batch}
    if batch:
        spec = json.dumps(list(batch.values()))
        procs[""] = _start([str(root / ".venv/bin/python"), "-c", _RUNNER, spec], root, env)
    for line, proc in procs.items():
        what = f"`{line}`" if line else "the Python scripts' runs"
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            failures.append(f"{what} ran past 120 s: does each honour MNIST_CNN_DRY_RUN?")
            continue
        if line:
            if proc.returncode != 0:
                tail = (stderr or stdout).strip().splitlines()[-3:]
                failures.append(
                    f"{runs[line].where}: {what} exited {proc.returncode}: {' | '.join(tail)}"
                )
            continue
        if proc.returncode != 0:
            failures.append(f"{what}: the runner exited {proc.returncode}: {stderr[-500:]}")
            continue
        codes = json.loads(stdout.strip().splitlines()[-1])
        assert len(codes) == len(batch), (codes, stdout)
        for ran, (code, tail) in zip(batch, codes, strict=True):
            if code != 0:
                failures.append(f"{runs[ran].where}: `{ran}` exited {code}: {tail}")
    # One process for all the --help checks (each script imports torch: once is enough).
    for script, s in helps.items():
        argv, sys.argv = sys.argv, [script, "--help"]
        try:
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_:
                runpy.run_path(str(ROOT / script), run_name="__main__")
            if exit_.value.code:
                failures.append(f"{s.where}: {script} --help exited {exit_.value.code}")
        finally:
            sys.argv = argv
    assert not failures, "\n".join(failures)
