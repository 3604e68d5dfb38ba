"""Every file, folder and command that README.md, recipes/README.md and docs/*.md name exists in the repository, and
so does every one that the package's docstrings (and the recipes' scripts) and the comments of the recipe and
accelerate YAML files name; a recipe whose comment says it is "the same as" a command parses to the same config.

A path counts when it starts in a source folder of the repository (`recipes/...`, `../accelerate_configs/`), when it
is a markdown link target, or when a code span holds a bare script or config name (`tiny_sft.yaml`, looked up next
to the page, then at the root). Paths under folders the docs tell you to create (`runs/`, `data/`, `outputs/`) and
placeholders (`<file>.yaml`) are not checked. Braces expand (`stage1_{ce,precision}.yaml`) and globs must match.

A command is a line of a fenced block or a code span that starts with `trl-shaped`, `bash`, `python` or
`accelerate launch` (in a docstring or a comment, any line that does): its script and config arguments must exist,
and a `trl-shaped` subcommand must be one of `trl_shaped.cli.SUBCOMMANDS` (read from the code, so a new subcommand is
known without editing this file). Paths in a docstring may also be relative to the package (`tasks/arithmetic.py`).
"""

import ast
import dataclasses
import itertools
import re
import shlex
from pathlib import Path

import pytest

from trl_shaped.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "recipes" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Files whose docstrings (Python) or comments (YAML) are documentation too.
CODE_DOCS = sorted([*(ROOT / "trl_shaped").rglob("*.py"), *(ROOT / "recipes").glob("*.py")])
YAML_DOCS = sorted([*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "accelerate_configs").glob("*.yaml")])

# The repository's source folders and top-level files: a path starting anywhere else names something to be created.
SOURCE_DIRS = ("trl_shaped", "recipes", "accelerate_configs", "benchmarks", "tests", "scripts", "docs", ".ci")
SOURCE_FILES = ("README.md", "pyproject.toml", ".pre-commit-config.yaml")
COMMANDS = ("trl-shaped", "bash", "python", "accelerate launch")

# One path segment: name characters, globs, or a brace group ({a,b}); a path is segments joined by "/".
_SEGMENT = r"(?:[\w.*-]|\{[\w.,-]+\})+"
_ROOTED = re.compile(
    rf"(?<![\w./-])((?:\.\./)*(?:{'|'.join(re.escape(d) for d in SOURCE_DIRS)})(?:/{_SEGMENT})*/?"
    rf"|(?:\.\./)*(?:{'|'.join(re.escape(f) for f in SOURCE_FILES)}))(?![\w/<])"  # `<`: a placeholder goes on
)
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
_BARE = re.compile(rf"{_SEGMENT}\.(?:py|ya?ml|sh)")


def _expand(path: str) -> list[str]:
    """`a{b,c}d` -> [abd, acd], for every brace group."""
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def _exists(path: str, base: Path) -> bool:
    for candidate in _expand(path):
        target = base / candidate
        found = target.exists() if not any(c in candidate for c in "*?[") else any(base.glob(candidate))
        if not found:
            return False
    return True


def _check_path(path: str, page: Path, bases: list[Path] | None = None) -> str | None:
    """None when `path` exists under one of `bases` (default: the page's folder for `../` paths, else the root)."""
    path = path.rstrip(".,;:")
    if bases is None:
        bases = [page.parent] if path.startswith("../") else [ROOT]
    if any(_exists(path, base) for base in bases):
        return None
    return f"{page.relative_to(ROOT)}: {path!r} does not exist"


def _commands(text: str, every_line: bool = False) -> list[str]:
    """Command lines of the fenced blocks (continuations joined, comments dropped) and of the code spans; with
    `every_line` (a docstring or a comment) of every line."""
    lines = []
    for block in [text] if every_line else _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #")[0].strip())
    lines += [span.strip() for span in _SPAN.findall(text)]
    return [line for line in lines if any(line == c or line.startswith(c + " ") for c in COMMANDS)]


def _check_command(command: str, page: Path) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError as error:
        return [f"{page.relative_to(ROOT)}: cannot parse command {command!r}: {error}"]
    found = []
    if words[0] == "trl-shaped" and len(words) > 1 and not words[1].startswith(("-", "<")):
        for name in words[1].split("|"):
            if name not in SUBCOMMANDS:
                found.append(
                    f"{page.relative_to(ROOT)}: `{command}` names no subcommand {name!r} ({list(SUBCOMMANDS)})"
                )
    # Paths with a folder are found in the page's text anyway; here the bare script and config names.
    for word in words[1:]:
        value = word.split("=", 1)[-1] if word.startswith("--") else word
        if "/" in value or "<" in value or not value.endswith((".py", ".yaml", ".yml", ".sh")):
            continue
        problem = _check_path(value, page, [page.parent, ROOT])
        if problem:
            found.append(f"{problem} (in `{' '.join(words)}`)")
    return found


def problems(page: Path, text: str, code: bool = False) -> list[str]:
    """Every missing path and bad command that `text` (the content of `page`) names; `code`: `text` is a docstring
    or a comment of `page` (commands on any line, paths also relative to the package)."""
    package = [ROOT, ROOT / "trl_shaped"] if code else None
    found = [_check_path(path, page, package) for path in _ROOTED.findall(text)]
    for target in _LINK.findall(text):
        if not re.match(r"[a-z]+:", target):  # http(s):, mailto: are not files
            found.append(_check_path(target, page, [page.parent]))  # relative to the page, as markdown reads it
    for span in _SPAN.findall(text):
        if _BARE.fullmatch(span.strip()):
            found.append(_check_path(span.strip(), page, [page.parent, ROOT]))
    for command in _commands(text, every_line=code):
        found += _check_command(command, page)
    return sorted({p for p in found if p})


def docstrings(path: Path) -> str:
    """The module, class and function docstrings of the Python file `path`."""
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return "\n\n".join(doc for doc in map(ast.get_docstring, nodes) if doc)


def comments(path: Path) -> str:
    """The comment text of the YAML file `path` (full-line and trailing comments, `#` removed)."""
    return "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_and_commands_exist(page):
    found = problems(page, page.read_text())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", CODE_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstrings_name_paths_and_commands_that_exist(path):
    found = problems(path, docstrings(path), code=True)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", YAML_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_comments_name_paths_and_commands_that_exist(path):
    found = problems(path, comments(path), code=True)
    assert not found, "\n".join(found)


_SAME_AS = re.compile(r"(trl-shaped \S+ [^(\n]*?)\s*\(the same as:? (trl-shaped [^)\n]+)\)")


def _parsed(command: str) -> list[dict]:
    import importlib

    words = shlex.split(command)
    parser = importlib.import_module(f"trl_shaped.scripts.{words[1]}").make_parser()
    return [dataclasses.asdict(group) for group in parser.parse_args_and_config(words[2:])]


def test_recipes_equal_the_commands_their_comments_say_they_equal(monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes name files relative to the repository root
    claims = [(path, m) for path in YAML_DOCS for m in _SAME_AS.finditer(comments(path))]
    assert claims  # recipes/demo_quick.yaml makes one
    for path, match in claims:
        recipe, command = match.groups()
        assert _parsed(recipe) == _parsed(command), f"{path.relative_to(ROOT)}: `{recipe}` != `{command}`"


def test_the_docs_folder_has_the_method_page():
    assert (ROOT / "docs" / "method.md") in PAGES


def test_the_checker_finds_what_is_missing():
    """The checker itself: it reads each kind of reference, and reports a missing one."""
    page = ROOT / "recipes" / "page.md"
    text = (
        "See `recipes/stage1_{ce,nowhere}.yaml`, [the method](../docs/method.md), [gone](gone.md), `tiny_sft.yaml`, "
        "`not_a_recipe.yaml`, recipes/tiny_*.yaml, runs/anything (an output), [wrong base](docs/method.md).\n\n"
        "```bash\n"
        "trl-shaped sft --config recipes/tiny_sft.yaml\n"
        "trl-shaped sft|nosuch --config <file>.yaml\n"
        "accelerate launch --config_file accelerate_configs/zero9.yaml \\\n    recipes/sft.py --config recipes/x.yaml\n"
        "bash scripts/nothing.sh  # a comment naming scripts/test.sh\n"
        "```\n"
    )
    found = "\n".join(problems(page, text))
    for missing in (
        "recipes/stage1_{ce,nowhere}.yaml",
        "'gone.md'",
        "not_a_recipe.yaml",
        "no subcommand 'nosuch'",
        "accelerate_configs/zero9.yaml",
        "recipes/x.yaml",
        "scripts/nothing.sh",
        "'docs/method.md'",
    ):
        assert missing in found, (missing, found)
    for present in ("../docs/method.md", "tiny_sft.yaml", "recipes/tiny_*.yaml", "runs/anything", "<file>.yaml"):
        assert f"'{present}' does not exist" not in found, (present, found)
    assert "scripts/test.sh" not in found  # the comment of a command line is not part of it
    assert len(found.splitlines()) == 8, found


def test_the_checker_reads_docstrings_and_yaml_comments(tmp_path):
    module = tmp_path / "module.py"
    module.write_text(
        '"""Run:\n\n    trl-shaped study --config recipes/study_nowhere.yaml\n"""\n\n\n'
        'def f():\n    """See scripts/loading.py and scripts/missing.py."""\n    return "recipes/not_a_docstring.yaml"\n'
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# trl-shaped nosuch --config recipes/tiny_sft.yaml\nseed: 1  # see recipes/gone.yaml\n")
    # named as files of the repository (where the checker looks), read from tmp_path
    found = problems(ROOT / "trl_shaped" / "module.py", docstrings(module), code=True)
    found = "\n".join(found + problems(ROOT / "recipes" / "recipe.yaml", comments(recipe), code=True))
    for missing in ("recipes/study_nowhere.yaml", "scripts/missing.py", "no subcommand 'nosuch'", "recipes/gone.yaml"):
        assert missing in found, (missing, found)
    assert "not_a_docstring" not in found and "loading.py" not in found, found  # code is not docs; package-relative
    assert len(found.splitlines()) == 4, found


def test_the_site_nav_lists_every_page():
    """mkdocs.yml's nav names every page of docs/ and the repository pages the site publishes (the hook's
    `PUBLISHED`), and nothing else; the strict build refuses a page left out, this finds it without building."""
    import yaml

    hook = ast.parse((ROOT / "docs" / "_hooks" / "repository_links.py").read_text())
    (published,) = [
        ast.literal_eval(node.value)
        for node in hook.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PUBLISHED"
    ]
    assert all((ROOT / path).is_file() for path in published)
    nav = [next(iter(entry.values())) for entry in yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]]
    pages = {page.name for page in (ROOT / "docs").glob("*.md")} | set(published.values())
    assert sorted(nav) == sorted(pages)
