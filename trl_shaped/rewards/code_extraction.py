"""Which program a completion means: the fenced blocks that define what the tests need, joined in order.

    extract_code(text, tests=None)   the program the code judge runs for `text` (below)
    fenced_blocks(text)              every fenced block of `text` (```` ``` ```` or ``~~~``), with the prose before it
    needed_names(tests)              the names test statements need the program to define (None for check_stdio)

Real completions rarely hold one block. After the solution they show a usage example, a block of asserts, the
expected output, or a wrong variant they warn about; they split a helper and the main function over two blocks,
indent the fence inside a list item, fence with ``~~~``, or close the fence on the last code line. Taking the last
block scores many right programs 0, so the program is chosen from what the tests need:

1. Blocks. A fence opens on a line of three or more backticks or tildes (indented or not; a backtick fence may also
   end a line of prose, as in ``Here it is: ```python``) and closes on a line of at least as many of the same
   character, or at the end of a code line (``    return x```) or at the end of the text (a completion cut by the
   length limit). The fence's indentation is removed from the block. When the block as closed does not parse but
   runs on to a later closing fence that makes it parse (a fence inside a string of the program), it runs on.
   Only blocks marked ``python``, ``python3``, ``py``, ``py3`` or nothing count; ``\\r\\n`` reads as ``\\n``.
2. Function tests (``assert add(1, 2) == 3``, HumanEval's ``check(entry_point)``, ``Solution().f(...)``): the
   names the tests read and do not bind are needed. For each, the last block that defines it (``def``, ``class``
   or an assignment) is kept; a block whose introducing sentence calls it wrong ("A common mistake is ...:")
   counts only when no other block defines the name, and an import counts only when no block defines it. Then,
   until nothing changes, the block defining each name a kept block reads from the module's globals (a helper, a
   constant, an import) is kept too. The kept blocks join in the text's order, so a later definition overrides an
   earlier one as it would in Python; blocks that only call, print or assert are never kept, so they never run.
   A kept block runs whole, as written (its own prints and asserts included).
3. Standard input tests (every test a ``check_stdio`` call): the script is the last block whose top-level code
   reads standard input (``input()``, ``sys.stdin``, ``open(0)``, directly or through the functions it calls), is
   no test scaffold (``sys.stdin = io.StringIO(...)``) and does not merely call another such script again (a
   ``main()`` block after a complete script); it is kept with the blocks it needs, as above.
4. Without tests (`extract_code(text)`: answer keys, direct callers): the blocks defining every function and class
   (``test_*`` and ``Test*`` ones aside), and a script that reads standard input, with what they need.
5. When nothing is kept that way (no block that parses defines what is needed), the last Python block, as before:
   a block that does not parse is kept only then. Without a Python block, the whole text; when the whole text does
   not parse, its lines of prose (a capital letter, three or more words or a final colon, and no Python by
   themselves) are dropped if the rest then parses. Prose dropping never applies to text Python accepts, and never
   to the built-in code task (its completions hold no capital letter).

The analysis reads the program with `ast` and `symtable` only: nothing of the completion runs here.
"""

import ast
import re
import string
import symtable
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..sandbox.programs import STDIO_CALL

PYTHON_TAGS = ("", "python", "python3", "py", "py3")
# Later closing fences tried when a block does not parse as closed (a fence inside one of its strings).
_REPAIR_LOOKAHEAD = 8
# An opening fence on a line of its own (any indentation, any info string); one ending a line of prose is found
# with str methods (a regular expression that looks for it backtracks quadratically on long lines).
_FENCE_LINE = re.compile(r"([ \t]*)(`{3,}|~{3,})(.*)")
_TAG_CHARACTERS = string.ascii_letters + string.digits + "_+#.-"
# The prose before a block that presents it as what not to write.
_WRONG = re.compile(
    r"\b(wrong|incorrect|mistakes?|buggy|broken|naive|avoid|fails|(don'?t|do not) (do|write)|"
    r"(won'?t|doesn'?t|does not|will not) work)\b",
    re.I,
)
_FIXED = re.compile(r"\b(fix(ed|es)?|correct(ed|ly)?|right|instead|better|working|final|updated|revised)\b", re.I)
# The language of an info string: ``python``, ``Python3``, ``{.python}``, ``python:main.py``, ``python3.11 title=x``.
_LANGUAGE = re.compile(r"[{.\s]*([A-Za-z]*\d*)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SENTENCE_START = re.compile(r"[A-Z][a-z'’]*\b")


@dataclass(frozen=True)
class FencedBlock:
    """One fenced block of a completion.

    Args:
        language (`str`): the language the info string names, lowercased, without a version's minor part or a file
            name (``"python3"`` for ``python3.11`` or ``python3:main.py``; ``""`` for a bare fence).
        code (`str`): the block's content, without the fence's indentation.
        closed (`bool`): whether a closing fence ends it (else it runs to the end of the text).
        intro (`str`): the sentence of prose that introduces it (the last before its opening fence).
    """

    language: str
    code: str
    closed: bool
    intro: str = ""


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _opening(line: str) -> tuple[int, str, str, str] | None:
    """(indentation, fence, info string, prose before the fence) when `line` opens a fence, else None."""
    match = _FENCE_LINE.match(line)
    if match and not (match[2][0] == "`" and "`" in match[3]):
        return len(match[1]), match[2], match[3].strip(), ""
    stripped = line.rstrip()
    head = stripped.rstrip(_TAG_CHARACTERS)
    tag, prose = stripped[len(head) :], head.rstrip("`")
    if tag[:1].isalpha() and len(head) - len(prose) >= 3 and prose.strip():
        return 0, head[len(prose) :], tag, prose
    return None


def _closing(line: str, char: str, length: int) -> str | None:
    """None when `line` does not close a fence of `length` `char`s; else the code written before the fence on it
    (``""`` for a fence on a line of its own)."""
    stripped = line.rstrip()
    body = stripped.rstrip(char)
    if len(stripped) - len(body) < length:
        return None
    return body if body.strip() else ""


def _dedent(lines: list[str], indent: int) -> str:
    """The block's lines less the fence's indentation (up to `indent` leading blanks), then less any indentation
    every line shares."""
    kept = []
    for line in lines:
        blanks = len(line) - len(line.lstrip(" \t"))
        kept.append(line[min(blanks, indent) :])
    return textwrap.dedent("\n".join(kept))


def _introduction(lines: list[str]) -> str:
    """The sentence that introduces a block: the last one of the last paragraph before it (``"That was wrong. Here
    is the fix:"`` introduces the fix, not a wrong block)."""
    paragraph = []
    for line in reversed(lines):
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    sentences = _SENTENCE_END.split(" ".join(reversed(paragraph))[-1000:])
    return sentences[-1]


def fenced_blocks(text: str) -> list[FencedBlock]:
    """Every fenced block of `text`, in order (rule 1 of the module's docstring).

    Args:
        text (`str`): a completion's text.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks, number, prose_start = [], 0, 0
    while number < len(lines):
        opening = _opening(lines[number])
        if opening is None:
            number += 1
            continue
        indent, fence, info, prose = opening
        intro = _introduction(lines[prose_start:number] + [prose])
        candidates = []  # (line of the closing fence, code before the fence on it)
        for later in range(number + 1, len(lines)):
            tail = _closing(lines[later], fence[0], len(fence))
            if tail is not None:
                candidates.append((later, tail))
                if len(candidates) > _REPAIR_LOOKAHEAD:
                    break

        def content(end, tail, start=number + 1, indent=indent):
            return _dedent(lines[start:end] + ([tail] if tail else []), indent)

        end, tail = candidates[0] if candidates else (len(lines), "")
        if candidates and not _parses(content(end, tail)):
            end, tail = next((c for c in candidates[1:] if _parses(content(*c))), (end, tail))
        language = _LANGUAGE.match(info)[1].lower()
        blocks.append(FencedBlock(language, content(end, tail), closed=end < len(lines), intro=intro))
        number = prose_start = end + 1
    return blocks


# --- what a block defines and reads --------------------------------------------------------------------------------


def _names(source: str) -> tuple[set, set, set]:
    """(names `source` reads from the module's globals, names it binds at module level, those it binds by import)."""
    top = symtable.symtable(source, "<code>", "exec")
    symbols = top.get_symbols()
    bound = {s.get_name() for s in symbols if s.is_assigned() or s.is_imported()}
    imported = {s.get_name() for s in symbols if s.is_imported() and not s.is_assigned()}
    used = {s.get_name() for s in symbols if s.is_referenced()}
    tables = list(top.get_children())
    while tables:
        table = tables.pop()
        used |= {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()}
        tables.extend(table.get_children())
    return used, bound, imported


def _reads_stdin(node: ast.AST) -> bool:
    """Whether `node` mentions standard input: ``input``, ``stdin``, ``fileinput``, ``open(0)``, ``os.read(0, n)``."""
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id in ("input", "stdin", "fileinput"):
            return True
        if isinstance(child, ast.Attribute) and child.attr == "stdin":
            return True
        if isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant):
            function = child.func
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            if name in ("open", "read") and child.args[0].value in (0, "/dev/stdin"):
                return True
    return False


def _sets_stdin_to_a_string(node: ast.AST) -> bool:
    """``sys.stdin = io.StringIO(...)``: a test scaffold that feeds the script an example, not the judge's input."""
    for child in ast.walk(node):
        if isinstance(child, ast.Assign) and isinstance(child.value, ast.Call):
            function = child.value.func
            name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
            if name in ("StringIO", "BytesIO") and any(
                isinstance(t, ast.Attribute) and t.attr == "stdin" for t in child.targets
            ):
                return True
    return False


@dataclass
class _Statement:
    binds: set  # names bound at module level
    uses: set  # names read from the module's globals
    runs: bool  # calls something when the module runs (not only def, class, import or a plain binding)
    reads_stdin: bool


@dataclass(eq=False)
class _Block:
    index: int
    code: str
    discouraged: bool  # its introduction presents it as wrong
    statements: list = field(default_factory=list)
    defines: set = field(default_factory=set)  # bound by def, class or assignment
    imports: set = field(default_factory=set)  # bound by import only
    uses: set = field(default_factory=set)  # globals it reads and does not bind itself
    functions: set = field(default_factory=set)  # top-level def and class names
    scaffold: bool = False


def _analyse(index: int, block: FencedBlock) -> _Block | None:
    """The block's names and statements; None when it does not parse (or is too deep to analyse)."""
    try:
        module = ast.parse(block.code)
        result = _Block(index, block.code, bool(_WRONG.search(block.intro)) and not _FIXED.search(block.intro))
        for node in module.body:
            used, bound, imported = _names(ast.unparse(node))
            definition = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            runs = not definition and not isinstance(node, (ast.Import, ast.ImportFrom))
            runs = runs and any(isinstance(child, ast.Call) for child in ast.walk(node))
            result.statements.append(_Statement(bound, used, runs, _reads_stdin(node)))
            result.defines |= bound - imported
            result.imports |= imported
            result.uses |= used
            result.scaffold = result.scaffold or _sets_stdin_to_a_string(node)
            if definition:
                result.functions.add(node.name)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    result.imports -= result.defines
    result.uses -= result.defines | result.imports
    return result


# --- choosing the blocks -------------------------------------------------------------------------------------------


class _Choice:
    """The analysed blocks of one completion and, per name, the block whose binding a joined program would use."""

    def __init__(self, blocks: list[_Block]):
        self.blocks, self.defined, self.imported = blocks, {}, {}
        for block in blocks:  # in order: a later block replaces an earlier one, unless presented as wrong
            for name in block.defines:
                if name not in self.defined or self.defined[name].discouraged or not block.discouraged:
                    self.defined[name] = block
            for name in block.imports:
                self.imported[name] = block

    def definer(self, name: str, imports: bool = True) -> _Block | None:
        """The last block that defines `name` and is not presented as wrong, else the last that defines it, else
        (with `imports`) the last that imports it."""
        found = self.defined.get(name)
        return found if found is not None or not imports else self.imported.get(name)

    def closure(self, kept: Iterable[_Block]) -> set:
        """`kept` and, until nothing changes, the blocks defining the globals a kept block reads and does not bind."""
        kept, todo = set(kept), list(kept)
        while todo:
            for name in todo.pop().uses:
                found = self.definer(name)
                if found is not None and found not in kept:
                    kept.add(found)
                    todo.append(found)
        return kept

    def for_names(self, names: set) -> set:
        """Rule 2: the blocks defining `names` (defined ones first, then imported ones not yet bound), with what they
        need."""
        kept = self.closure({b for n in names if (b := self.definer(n, imports=False)) is not None})
        bound = set().union(*(b.defines | b.imports for b in kept))
        return self.closure(kept | {b for n in names - bound if (b := self.definer(n)) is not None})

    def readers(self) -> set:
        """The names whose binding reads standard input, directly or through the names it uses."""
        used_by, readers = {}, set()  # name -> names whose binding uses it
        for name in self.defined.keys() | self.imported.keys():
            for statement in self.definer(name).statements:
                if name in statement.binds:
                    if statement.reads_stdin:
                        readers.add(name)
                    for used in statement.uses:
                        used_by.setdefault(used, set()).add(name)
        todo = list(readers)
        while todo:
            for name in used_by.get(todo.pop(), ()):
                if name not in readers:
                    readers.add(name)
                    todo.append(name)
        return readers

    def script(self) -> set:
        """Rule 3: the script that reads standard input with the blocks it needs (empty when there is none)."""
        readers = self.readers()
        scripts = [
            b
            for b in self.blocks
            if not b.scaffold and any(s.runs and (s.reads_stdin or s.uses & readers) for s in b.statements)
        ]
        for script in reversed(scripts):
            kept = self.closure({script})
            if not any(other in kept for other in scripts if other is not script):  # not a second call of a script
                return kept
        return self.closure({scripts[-1]}) if scripts else set()


def needed_names(tests: Sequence[str]) -> set | None:
    """The names the test statements read and do not bind (those the program must define); None when every test
    is a ``check_stdio`` call (the program is a script)."""
    if tests and all(t.lstrip().startswith(STDIO_CALL) for t in tests):
        return None
    names = set()
    for test in tests:
        try:
            used, bound, _ = _names(test)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # a test that does not parse fails whatever the program
        names |= used - bound
    return names


def _is_prose(line: str) -> bool:
    """A line of prose: it starts a sentence at the margin, has three or more words or ends with a colon, and is
    no Python by itself."""
    words = line.split()
    return (
        bool(_SENTENCE_START.match(line))
        and (len(words) >= 3 or line.rstrip().endswith(":"))
        and not _parses(line.strip())
    )


def _unfenced(text: str) -> str:
    """Rule 5 without a Python block: the text, less its prose lines when only they keep it from parsing."""
    if _parses(text):
        return text
    lines = text.split("\n")
    kept = [line for line in lines if not _is_prose(line)]
    code = "\n".join(kept).strip("\n")
    return code if len(kept) < len(lines) and code.strip() and _parses(code) else text


def extract_code(text, tests: Sequence[str] | None = None) -> str:
    """The program `text` means, for the tests `tests` (see the module's docstring for the rules).

    Args:
        text (`str`): a completion's text; anything else gives ``""``.
        tests (`list[str]`, *optional*): the problem's test statements (the ``tests`` column): the names they read
            decide which blocks are kept; all ``check_stdio`` calls keep the script that reads standard input.
            Without tests, the blocks defining functions and classes and a standard-input script are kept.

    Returns:
        `str`: the kept blocks joined by a blank line, in the text's order.
    """
    if tests is not None and (
        isinstance(tests, str) or not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests)
    ):
        raise ValueError(f"tests must be None or a list of test statements (strings), got {tests!r:.80}")
    if not isinstance(text, str):
        return ""
    fenced = [b for b in fenced_blocks(text) if b.language in PYTHON_TAGS]
    if not fenced:
        return _unfenced(text.replace("\r\n", "\n"))
    choice = _Choice([b for b in (_analyse(i, block) for i, block in enumerate(fenced)) if b is not None])
    names = needed_names(tests) if tests else set()
    if names is None:
        kept = choice.script()
    elif names:
        kept = choice.for_names(names)
    else:
        trusted = [b for b in choice.blocks if not b.discouraged and b.functions] or choice.blocks
        functions = {n for b in trusted for n in b.functions if not n.startswith(("test_", "Test"))}
        kept = choice.for_names(functions) | choice.script()
    if not kept:
        return fenced[-1].code
    return "\n\n".join(b.code for b in sorted(kept, key=lambda b: b.index))
