"""Every code block of README.md, recipes/README.md and docs/*.md runs, or, where marked, parses: a renamed flag, a
moved config or a renamed import fails here instead of for a reader.

A fenced block is ```python or ```bash (a fence without a language, or ```text, is a diagram and is left alone; any
other language fails, so that no block goes unchecked by accident). A block whose fence follows the line
`<!-- dry-run -->` (an HTML comment, invisible on the rendered page) is one not meant to run here: training at
scale, a cluster launch, the set-up scripts.

Blocks that run, in a temporary working directory, in page order:

- python: the blocks of a page share one namespace, as a reader runs them one after another. README.md's are run by
  `tests/test_readme.py`, which also checks what they produce.
- bash: each command in this process: `trl-shaped ...` through `trl_shaped.cli.dispatch`, `python <script> ...` as
  the script's `__main__` (a repository script by its path from the root). Commands of other programs cannot run.

Blocks marked dry-run are checked without running anything:

- python: compiled, and every imported name must import.
- bash: each command parsed by its parser. `trl-shaped <sub>` as the command line parses it (the `--config` file
  read, then the subcommand's `TrlParser` and its config's checks); `accelerate launch` by accelerate's parser, then
  the script's arguments by the script's parser (`recipes/<sub>.py`, `-m trl_shaped <sub>`: as `trl-shaped <sub>`);
  `python <script> ...` by the script's own argparse parser, stopped before the script does anything;
  `bash scripts/demo.sh ...` as `trl-shaped demo ...`; `pip install` by the extras pyproject.toml defines. A
  stand-in `sbatch` is on the PATH, as on the login node where `--launcher slurm` runs. Without a GPU,
  `--use_cpu true` joins `sft` and `grpo` commands: the GPU recipes ask for bf16, which TrainingArguments refuses on
  a CPU-only machine otherwise. Any other command fails: teach it to this file.
"""

import argparse
import ast
import builtins
import contextlib
import importlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import torch

from trl_shaped.cli import SUBCOMMANDS, dispatch
from trl_shaped.packaged import packaged_path
from trl_shaped.scripts import config_file_problem, parse_or_exit, split_config_flag

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "recipes" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DRY_RUN = "<!-- dry-run -->"
DIAGRAMS = ("", "text")
_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
_ENV = re.compile(r"[A-Z_][A-Z0-9_]*=")
_SCRIPT_OF = {f"recipes/{name}.py": name for name in SUBCOMMANDS}  # the launchable recipes: `trl-shaped <name>`


def blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, code, dry_run) of each fenced block of `text`."""
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        found.append((match[1], match[2], bool(before) and before[-1].strip() == DRY_RUN))
    return found


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block, as words: continuation lines joined, comments and blank lines dropped."""
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and _ENV.match(words[0]):  # NAME=value before a command sets its environment
            words.pop(0)
        if words:
            found.append(words)
    return found


# ------------------------------------------------------------------ dry runs: parse, never run
@contextlib.contextmanager
def _usage_errors(command: list[str]):
    """Turn a parser's exit (usage error) into an AssertionError naming the command and the parser's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            yield
    except SystemExit as error:
        if error.code not in (0, None):
            message = stderr.getvalue().strip().splitlines()[-1:] or [f"exit status {error.code}"]
            raise AssertionError(f"`{shlex.join(command)}`: {message[0]}") from None


def parse_trl_shaped(name: str, args: list[str], command: list[str]) -> None:
    """Parse `trl-shaped <name> <args>` as the command line does, without running it."""
    assert name in SUBCOMMANDS, f"`{shlex.join(command)}`: no subcommand {name!r} ({list(SUBCOMMANDS)})"
    args = split_config_flag(args)
    if "--accelerate_config" in args:  # read by the command line itself, not by the subcommand's parser
        index = args.index("--accelerate_config")
        config = packaged_path(args[index + 1])
        assert Path(config).is_file(), f"`{shlex.join(command)}`: --accelerate_config {config!r} is not a file"
        args = args[:index] + args[index + 2 :]
    args = [
        packaged_path(arg) if i > 0 and args[i - 1] == "--config" else arg  # as trl_shaped.cli._packaged_files
        for i, arg in enumerate(args)
    ]
    if name in ("sft", "grpo") and not torch.cuda.is_available():
        args = [*args, "--use_cpu", "true"]
    problem = config_file_problem(args)
    assert problem is None, f"`{shlex.join(command)}`: {problem}"
    parser = importlib.import_module(f"trl_shaped.scripts.{name}").make_parser(f"trl-shaped {name}")
    with _login_node(), _usage_errors(command):
        parse_or_exit(parser, args)


@contextlib.contextmanager
def _login_node():
    """A stand-in `sbatch` on the PATH, as on a cluster's login node, where `--launcher slurm` is meant to be parsed
    (it never runs: parsing only checks that it is there)."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        sbatch = Path(folder) / "sbatch"
        sbatch.write_text("#!/bin/sh\nexit 1\n")
        sbatch.chmod(0o755)
        patch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


class _Parsed(Exception):
    """Raised by the patched `ArgumentParser.parse_args` once a script's arguments parsed: the script stops there."""


def parse_python_script(script: str, args: list[str], command: list[str]) -> None:
    """Parse a repository script's arguments with its own argparse parser, stopping it before it does anything."""
    path = ROOT / script
    assert path.is_file(), f"`{shlex.join(command)}`: {script} does not exist"
    if "parse_args" not in path.read_text():
        assert not args, f"`{shlex.join(command)}`: {script} takes no arguments"
        compile(path.read_text(), str(path), "exec")
        return
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, *a, **k):
        parse_args(parser, *a, **k)
        raise _Parsed

    with contextlib.ExitStack() as stack:
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(
            argparse.ArgumentParser, "parse_args", parse_then_stop
        )
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(sys, "argv", [str(path), *args])
        stack.enter_context(_usage_errors(command))
        try:
            runpy.run_path(str(path), run_name="__main__")
        except _Parsed:
            return
    raise AssertionError(f"`{shlex.join(command)}`: {script} never parsed its arguments")


def parse_accelerate_launch(args: list[str], command: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    with _usage_errors(command):
        launch = launch_command_parser().parse_args(args)
    if launch.config_file is not None:
        assert (ROOT / launch.config_file).is_file(), f"`{shlex.join(command)}`: {launch.config_file} does not exist"
    script, script_args = launch.training_script, launch.training_script_args
    if launch.module:
        assert script == "trl_shaped", f"`{shlex.join(command)}`: -m {script} is not trl_shaped"
        parse_trl_shaped(script_args[0], script_args[1:], command)
    elif script in _SCRIPT_OF:
        parse_trl_shaped(_SCRIPT_OF[script], script_args, command)
    else:
        parse_python_script(script, script_args, command)


def parse_pip_install(args: list[str], command: list[str]) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for requirement in args:
        if requirement.startswith("-"):
            continue
        named = re.fullmatch(r"(?:-e\s*)?(\.|trl_shaped)(?:\[([\w,]+)\])?", requirement)
        assert named, f"`{shlex.join(command)}`: {requirement!r} is not this package"
        missing = set((named[2] or "").split(",")) - extras - {""}
        assert not missing, f"`{shlex.join(command)}`: no extra {sorted(missing)} in pyproject.toml ({sorted(extras)})"


def dry_run(command: list[str]) -> None:
    """Check `command` (words) against its parser; AssertionError naming what is wrong."""
    program, args = command[0], command[1:]
    if program == "trl-shaped":
        assert args, "`trl-shaped` without a subcommand"
        parse_trl_shaped(args[0], args[1:], command)
    elif program == "accelerate" and args[:1] == ["launch"]:
        parse_accelerate_launch(args[1:], command)
    elif program == "python" and args[:1] == ["-m"] and args[1:2] == ["trl_shaped"]:
        parse_trl_shaped(args[2], args[3:], command)
    elif program == "python" and args and args[0].endswith(".py"):
        parse_python_script(args[0], args[1:], command)
    elif program == "bash" and args and args[0].startswith("scripts/"):
        assert (ROOT / args[0]).is_file(), f"`{shlex.join(command)}`: {args[0]} does not exist"
        if args[0] == "scripts/demo.sh":  # its arguments go to `trl-shaped demo`; test.sh's to pytest
            parse_trl_shaped("demo", args[1:], command)
    elif program == "pip" and args[:1] == ["install"]:
        parse_pip_install([a for a in args[1:] if a != "-e"], command)
    elif program == "mkdocs":
        assert args[:1] in (["build"], ["serve"]), f"`{shlex.join(command)}`: not a mkdocs command the docs use"
    else:
        raise AssertionError(f"`{shlex.join(command)}`: no checker for {program!r}: teach it to {__file__}")


def check_imports(code: str, where: str) -> None:
    """Compile `code` and import every name it imports."""
    tree = ast.parse(code, where)
    compile(tree, where, "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert importlib.util.find_spec(alias.name), f"{where}: no module {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"


# ------------------------------------------------------------------ runs
def run_command(command: list[str]) -> None:
    program, args = command[0], command[1:]
    if program == "trl-shaped":
        dispatch(args)
    elif program == "python" and args and args[0].endswith(".py"):
        script = args[0] if Path(args[0]).is_file() else str(ROOT / args[0])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", [script, *args[1:]])
            runpy.run_path(script, run_name="__main__")
    else:
        raise AssertionError(f"`{shlex.join(command)}` cannot run in the test: mark its block {DRY_RUN}")


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_marked_blocks_parse(page):
    for language, code, marked in blocks(page.read_text()):
        assert language in ("python", "bash", *DIAGRAMS), f"{_page_id(page)}: a ```{language} block is not checked"
        if not marked:
            continue
        if language == "python":
            check_imports(code, _page_id(page))
        elif language == "bash":
            for command in commands(code):
                dry_run(command)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_unmarked_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the blocks write lands here; the recipes are found from any directory
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for language, code, marked in blocks(page.read_text()):
        if marked:
            continue
        if language == "python" and page != ROOT / "README.md":  # README.md's: tests/test_readme.py
            exec(compile(code, _page_id(page), "exec"), namespace)
        elif language == "bash":
            for command in commands(code):
                run_command(command)


# ------------------------------------------------------------------ the checker itself
def test_the_checker_reads_markers_and_commands():
    page = (
        "```bash\ntrl-shaped demo --quick  # a comment\n```\n\n<!-- dry-run -->\n```bash\n"
        "FOO=1 accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sft.py \\\n"
        "    --config recipes/tiny_sft.yaml\n```\n\n```\na diagram\n```\n"
    )
    assert blocks(page) == [
        ("bash", "trl-shaped demo --quick  # a comment\n", False),
        ("bash", "FOO=1 accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sft.py \\\n"
                 "    --config recipes/tiny_sft.yaml\n", True),
        ("", "a diagram\n", False),
    ]  # fmt: skip
    assert commands(blocks(page)[1][1]) == [
        ["accelerate", "launch", "--config_file", "accelerate_configs/cpu.yaml", "recipes/sft.py", "--config",
         "recipes/tiny_sft.yaml"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "line, message",
    [
        ("trl-shaped sft --config recipes/tiny_sft.yaml --shaping_betta 0.5", "shaping_betta"),
        ("trl-shaped sft --config recipes/tiny_sft.yaml --shaping_preset nosuch", "nosuch"),
        ("trl-shaped eval --config recipes/nowhere.yaml", "nowhere.yaml"),
        ("trl-shaped nosuch --flag", "no subcommand 'nosuch'"),
        ("trl-shaped study --config recipes/study_tiny.yaml --launcher moon", "moon"),
        ("accelerate launch --config_file accelerate_configs/zero9.yaml recipes/sft.py", "zero9.yaml"),
        ("accelerate launch --num_procs 2 recipes/sft.py", "num_procs"),
        ("accelerate launch recipes/grpo.py --config recipes/tiny_grpo.yaml --num_generationz 4", "num_generationz"),
        ("python recipes/make_tiny.py runs/tiny --no_such_flag", "no_such_flag"),
        ("python recipes/nowhere.py", "nowhere.py"),
        ("bash scripts/demo.sh --quik", "quik"),
        ("pip install -e .[math,nosuch]", "nosuch"),
        ("curl example.org", "no checker for 'curl'"),
    ],
)
def test_a_dry_run_reports_what_is_wrong(line, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        dry_run(shlex.split(line))


def test_a_dry_run_accepts_what_is_right():
    for line in (
        "trl-shaped sft --config recipes/tiny_sft.yaml --shaping_preset diversity --accelerate_config "
        "accelerate_configs/cpu.yaml",
        "accelerate launch --config_file accelerate_configs/zero3.yaml -m trl_shaped eval --config "
        "recipes/tiny_eval.yaml",
        "python recipes/make_tiny.py runs/tiny",
        "bash scripts/demo.sh --quick",
        "pip install -e .[math,code]",
    ):
        dry_run(shlex.split(line))


def test_checked_imports_must_exist():
    check_imports("from trl_shaped import ShapedSFTTrainer\nimport torch\n", "ok")
    with pytest.raises(AssertionError, match="no ShapedSFTTrainr"):
        check_imports("from trl_shaped import ShapedSFTTrainr\n", "page")
