"""Code extraction (trl_shaped/rewards/code_extraction.py): completions written the way real models write them, each
extracted for its tests and run for real in the sandbox, where the right program must score 1.0; then text that is
hostile to the extraction (no code, prose, other languages, cut fences, CRLF, fences inside strings, many blocks),
the rules without tests, and the built-in task's completions, which must come out unchanged."""

import pytest

from trl_shaped.rewards.code import CodeReward, extract_code, normalized_code
from trl_shaped.rewards.code_extraction import fenced_blocks, needed_names
from trl_shaped.rewards.code_tests import humaneval_tests, stdio_tests
from trl_shaped.sandbox import LocalSandbox, SandboxLimits
from trl_shaped.tasks.code import CodeTask

LIMITS = SandboxLimits(wall_time_s=5, cpu_time_s=5, memory_bytes=256 << 20, tmp_bytes=8 << 20)
ADD = ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10, 5) == 15"]
RIGHT_ADD = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def reward():
    box = LocalSandbox(LIMITS, workers=2)
    yield CodeReward(sandbox=box)
    box.close()


# --- function tests: the blocks that define the tested names ------------------------------------------------------

USAGE_BLOCK = """Here's a simple function that adds two numbers:

```python
def add(a, b):
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b
```

### Example usage

```python
print(add(1, 2))      # Output: 3
print(add(1, 2, 3))   # raises TypeError: a usage block must never run
```
"""

# The model's own check holds a wrong expectation: run, it would fail the program.
ASSERTS_BLOCK = """To solve this, we simply return `a + b`.

```py
def add(a: int, b: int) -> int:
    return a + b
```

Let's verify with a few test cases:

```py
assert add(1, 2) == 3
assert add(2, 2) == 5
print("All tests passed!")
```
"""

OUTPUT_BLOCK = """```python
def add(a, b):
    return a + b

print(add(1, 2))
```

Output:
```
3
```
"""

DRAFT_THEN_FIX = """My first attempt:

```python
def add(a, b):
    return a - b
```

Wait, that subtracts. Here is the corrected version:

```python
def add(a, b):
    return a + b
```

Tests:

```python
assert add(1, 2) == 3
assert add(0, 0) == 1
```
"""

# "wrong" speaks of the draft before; the sentence introducing the fix does not call it wrong.
WRONG_THEN_REDO = """```python
def add(a, b):
    return a * b
```

That's wrong: it multiplies. Let me redo it:

```python
def add(a, b):
    return a + b
```
"""

WRONG_DRAFT_AFTER = """```python
def add(a, b):
    return a + b
```

A common mistake is to concatenate the arguments as strings, which is wrong for numbers:

```python
def add(a, b):
    return int(str(a) + str(b))
```
"""

# The draft's helper stays (the fix calls it); the fix's add overrides the draft's, as joined Python would.
DRAFT_HELPER_THEN_FIX = """First try:

```python
def total(values):
    return sum(values)


def add(a, b):
    return total([a, b]) + 1
```

Off by one. Fixed:

```python
def add(a, b):
    return total([a, b])
```
"""

HELPER_AND_MAIN = """We need a primality test first:

```python
def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n ** 0.5) + 1))
```

Then the main function counts the primes below `n` using the helper:

```python
def count_primes(n):
    return sum(1 for k in range(n) if is_prime(k))
```

For example:

```python
count_primes(10)  # 4
```
"""

IMPORT_AND_CONSTANT_BLOCKS = """Imports and the modulus:

```python
from math import comb

MOD = 10**9 + 7
```

The function:

```python
def paths(n):
    return comb(2 * n, n) % MOD
```

```python
print(paths(3))
```
"""

LIST_ITEM_FENCE = """Steps:

1. Define the function:

    ```python
    def add(a, b):
        return a + b
    ```

2. Try it:

    ```python
    print(add(2, 3))
    ```
"""

BULLET_FENCE = """- Solution:
  ```python
  def add(a, b):
      result = a + b
      return result
  ```
- Complexity: O(1).
"""

TILDE_FENCE = """~~~python
def add(a, b):
    return a + b
~~~

~~~
>>> add(1, 2)
3
~~~
"""

CLOSED_ON_CODE_LINE = """Here you go:
```python
def add(a, b):
    return a + b```
This runs in constant time."""

LEETCODE = """```python
from typing import List


class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
        return []
```

**Example:**

```python
sol = Solution()
print(sol.twoSum([2, 7, 11, 15], 9))  # [0, 1]
print(sol.twoSum([3, 3], 7))  # []
```
"""
LEETCODE_TESTS = [
    "assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]",
    "assert Solution().twoSum([3, 2, 4], 6) == [1, 2]",
]

HUMANEVAL = """```python
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for b in numbers[i + 1 :]:
            if abs(a - b) < threshold:
                return True
    return False
```

Check against the docstring examples:

```python
>>> has_close_elements([1.0, 2.0, 3.0], 0.5)
False
```

```python
import doctest
doctest.testmod()
print(has_close_elements([1.0, 2.8, 3.0], 0.3))
```
"""
HUMANEVAL_TESTS = humaneval_tests(
    "def check(candidate):\n"
    "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
    "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
    "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n",
    "has_close_elements",
)

FUNCTION_CASES = {
    "usage block": (USAGE_BLOCK, ADD),
    "asserts block": (ASSERTS_BLOCK, ADD),
    "output block": (OUTPUT_BLOCK, ADD),
    "draft then fix": (DRAFT_THEN_FIX, ADD),
    "wrong then redo": (WRONG_THEN_REDO, ADD),
    "wrong draft after": (WRONG_DRAFT_AFTER, ADD),
    "draft helper then fix": (DRAFT_HELPER_THEN_FIX, ADD),
    "helper and main": (HELPER_AND_MAIN, ["assert count_primes(10) == 4", "assert count_primes(2) == 0"]),
    "import and constant blocks": (IMPORT_AND_CONSTANT_BLOCKS, ["assert paths(3) == 20", "assert paths(1) == 2"]),
    "list item fence": (LIST_ITEM_FENCE, ADD),
    "bullet fence": (BULLET_FENCE, ADD),
    "tilde fence": (TILDE_FENCE, ADD),
    "closed on code line": (CLOSED_ON_CODE_LINE, ADD),
    "leetcode": (LEETCODE, LEETCODE_TESTS),
    "humaneval": (HUMANEVAL, HUMANEVAL_TESTS),
}


@pytest.mark.parametrize("name", list(FUNCTION_CASES))
def test_function_completions_score_as_their_solution(reward, name):
    completion, tests = FUNCTION_CASES[name]
    assert reward([completion], tests=[tests]) == [1.0]
    assert reward([[{"role": "assistant", "content": completion}]], tests=[tests]) == [1.0]


def test_kept_blocks_join_in_order_and_leave_usage_out():
    assert extract_code(USAGE_BLOCK, ADD) == 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b'
    assert extract_code(ASSERTS_BLOCK, ADD) == "def add(a: int, b: int) -> int:\n    return a + b"
    # the draft then the fix, in order: the fix's definition is the one Python keeps
    draft = "def total(values):\n    return sum(values)\n\n\ndef add(a, b):\n    return total([a, b]) + 1"
    assert extract_code(DRAFT_HELPER_THEN_FIX, ADD) == f"{draft}\n\ndef add(a, b):\n    return total([a, b])"
    assert extract_code(DRAFT_THEN_FIX, ADD) == RIGHT_ADD  # the draft defines nothing the fix needs
    assert extract_code(IMPORT_AND_CONSTANT_BLOCKS, ["assert paths(3) == 20"]) == (
        "from math import comb\n\nMOD = 10**9 + 7\n\ndef paths(n):\n    return comb(2 * n, n) % MOD"
    )
    assert "print" not in extract_code(LEETCODE, LEETCODE_TESTS)
    assert "doctest" not in extract_code(HUMANEVAL, HUMANEVAL_TESTS)
    assert needed_names(HUMANEVAL_TESTS) >= {"has_close_elements"} and "check" not in needed_names(HUMANEVAL_TESTS)


# --- standard input tests: the script that reads input ------------------------------------------------------------

STDIO_TESTS = stdio_tests(["3\n1 2 3\n", "2\n10 -4\n"], ["6\n", "6\n"])

SCRIPT_WITH_SAMPLES = """Read n, then n numbers, and print their sum.

```python
n = int(input())
nums = list(map(int, input().split()))
print(sum(nums))
```

Sample input:
```
3
1 2 3
```
Sample output:
```
6
```
"""

MAIN_THEN_GUARD = """```python
import sys


def solve(nums):
    return sum(nums)


def main():
    data = sys.stdin.read().split()
    n = int(data[0])
    print(solve(list(map(int, data[1 : n + 1]))))
```

And the entry point:

```python
if __name__ == "__main__":
    main()
```

Calling `solve` directly:

```python
print(solve([1, 2, 3]))  # 6
```
"""

SCRIPT_WITH_SCAFFOLD = """```python
def main():
    n = int(input())
    print(sum(int(x) for x in input().split()[:n]))


main()
```

To try it locally without typing the input:

```python
import io
import sys

sys.stdin = io.StringIO("2\\n5 5\\n")
main()  # prints 10
```
"""

SCRIPT_CALLED_AGAIN = """```python
def main():
    n = int(input())
    print(sum(map(int, input().split()[:n])))


if __name__ == "__main__":
    main()
```

Run it with:

```python
main()
```

```bash
python3 solution.py < input.txt
```
"""

STDIO_CASES = {
    "script with samples": SCRIPT_WITH_SAMPLES,
    "main then guard": MAIN_THEN_GUARD,
    "script with scaffold": SCRIPT_WITH_SCAFFOLD,
    "script called again": SCRIPT_CALLED_AGAIN,
}


@pytest.mark.parametrize("name", list(STDIO_CASES))
def test_stdio_completions_score_as_their_script(reward, name):
    assert reward([STDIO_CASES[name]], tests=[STDIO_TESTS]) == [1.0]


def test_the_script_is_joined_with_what_it_calls():
    script = extract_code(MAIN_THEN_GUARD, STDIO_TESTS)
    assert script.startswith("import sys") and script.endswith('if __name__ == "__main__":\n    main()')
    assert "print(solve([1, 2, 3]))" not in script
    assert "StringIO" not in extract_code(SCRIPT_WITH_SCAFFOLD, STDIO_TESTS)
    assert needed_names(STDIO_TESTS) is None


# --- hostile text ---------------------------------------------------------------------------------------------------


def test_text_without_code_scores_zero_and_is_kept_whole(reward):
    completions = [
        "I'm sorry, but I can't help with that.",
        "The answer is to add the two numbers.\nJust return their sum.",
        "Run this:\n```bash\necho 'def add(a, b): return a + b'\n```",
        "",
    ]
    for text in completions:
        assert extract_code(text, ADD) == text
    assert reward(completions, tests=[ADD] * len(completions)) == [0.0] * len(completions)


def test_other_languages_are_skipped_and_python_is_found(reward):
    text = "Install:\n```bash\npip install nothing\n```\n```python\n" + RIGHT_ADD + "\n```\n```text\n3\n```"
    assert extract_code(text, ADD) == RIGHT_ADD
    assert reward([text], tests=[ADD]) == [1.0]


def test_a_fence_cut_by_the_length_limit(reward):
    cut_usage = f"```python\n{RIGHT_ADD}\n```\n\nUsage:\n```python\nprint(add(1,"
    cut_after_code = f"Solution:\n```python\n{RIGHT_ADD}\n"
    cut_in_code = "```python\ndef add(a, b):\n    return a +"
    assert extract_code(cut_usage, ADD) == RIGHT_ADD  # the cut block does not parse: left out
    assert extract_code(cut_after_code, ADD) == RIGHT_ADD + "\n"
    assert extract_code(cut_in_code, ADD) == "def add(a, b):\n    return a +"  # nothing parses: the last block
    assert reward([cut_usage, cut_after_code, cut_in_code], tests=[ADD] * 3) == [1.0, 1.0, 0.0]


def test_crlf_line_endings(reward):
    text = USAGE_BLOCK.replace("\n", "\r\n")
    assert "\r" not in extract_code(text, ADD)
    stdio = SCRIPT_WITH_SAMPLES.replace("\n", "\r\n")
    assert reward([text, stdio], tests=[ADD, STDIO_TESTS]) == [1.0, 1.0]


WRAP_TESTS = ["assert wrap('x') == '```python\\nx\\n```'", "assert wrap('') == '```python\\n\\n```'"]


def test_fences_inside_a_string_of_the_program(reward):
    body = 'TEMPLATE = """```python\n{}\n```"""\n\n\ndef wrap(code):\n    return TEMPLATE.format(code)\n'
    longer_fence = f"Four backticks, since the code holds three:\n````python\n{body}````\n"
    same_fence = f"```python\n{body}```\n\nExample:\n```python\nprint(wrap('x'))\n```\n"
    assert extract_code(longer_fence, WRAP_TESTS) == body.rstrip()
    assert extract_code(same_fence, WRAP_TESTS) == body.rstrip()  # the inner fences would cut a string open: run on
    assert reward([longer_fence, same_fence], tests=[WRAP_TESTS] * 2) == [1.0, 1.0]


def test_unfenced_code_with_prose(reward):
    prose_around = (
        "Here is a Python function that adds two numbers:\n"
        f"{RIGHT_ADD}\n"
        "This function takes two arguments and returns their sum.\n"
        "Example:\n"
        "print(add(1, 2))"
    )
    assert extract_code(prose_around, ADD) == f"{RIGHT_ADD}\nprint(add(1, 2))"
    broken = f"{RIGHT_ADD}\nreturn a +"  # no prose to drop: the text stays as it is (and fails as Python would)
    assert extract_code(broken, ADD) == broken
    assert extract_code(RIGHT_ADD, ADD) == RIGHT_ADD  # text that parses is never touched
    assert reward([prose_around, broken], tests=[ADD] * 2) == [1.0, 0.0]


def test_many_blocks_and_text_that_breaks_parsers(reward):
    usage = "".join(f"Case {i}:\n```python\nprint(add({i}, {i}))\n```\n" for i in range(3000))
    text = f"```python\n{RIGHT_ADD}\n```\n" + usage
    assert extract_code(text, ADD) == RIGHT_ADD
    deep = "```python\nx = " + "(" * 5000 + ")" * 5000 + "\n```\n" + f"```python\n{RIGHT_ADD}\n```"
    assert extract_code(deep, ADD) == RIGHT_ADD
    null_byte = f"```python\n{RIGHT_ADD}\n```\n```python\ndef add(a, b):\x00\n```"
    assert extract_code(null_byte, ADD) == RIGHT_ADD
    assert reward([text, deep, null_byte], tests=[ADD] * 3) == [1.0, 1.0, 1.0]
    # long lines that make backtracking patterns quadratic
    for line in ("a" + "`" * 100_000, "```" + " " * 100_000 + "x", "x ```" * 20_000):
        assert extract_code(line, ADD) == line


def test_when_nothing_parses_the_last_python_block_is_run(reward):
    # no block that parses defines add: the last Python block, as the text wrote it (a block that fails to parse
    # is kept only then)
    text = "```python\ndef add(a, b)\n    return a + b\n```\n```python\nprint(add(1, 2))\n```"
    assert extract_code(text, ADD) == "print(add(1, 2))"
    misnamed = f"```python\n{RIGHT_ADD.replace('add', 'plus')}\n```"
    assert extract_code(misnamed, ADD) == RIGHT_ADD.replace("add", "plus")
    assert reward([text, misnamed], tests=[ADD] * 2) == [0.0, 0.0]


# --- without tests, and the callers that pass none -----------------------------------------------------------------


def test_without_tests_definitions_and_the_script_are_kept():
    assert extract_code(USAGE_BLOCK) == extract_code(USAGE_BLOCK, ADD)
    assert extract_code(HELPER_AND_MAIN).endswith("return sum(1 for k in range(n) if is_prime(k))")
    assert extract_code(MAIN_THEN_GUARD) == extract_code(MAIN_THEN_GUARD, STDIO_TESTS)
    assert extract_code(SCRIPT_WITH_SAMPLES).endswith("print(sum(nums))")
    pytest_style = f"```python\n{RIGHT_ADD}\n```\n```python\ndef test_add():\n    assert add(1, 2) == 3\n```"
    assert extract_code(pytest_style) == RIGHT_ADD
    # no function, no script: the last Python block, as before
    assert extract_code("```python\nx = 1\n```\n```\ny = 2\n```") == "y = 2"
    # answer keys vote on the solution, not on the examples shown after it
    assert normalized_code(USAGE_BLOCK) == 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b'


def test_fenced_blocks_reads_fences_as_written():
    blocks = fenced_blocks(
        "Text ```python\na = 1\n```\n  ~~~~ Python title=x.py\n  b = 2\n  ~~~~\n```\nc = 3```\n```js\nd\n```"
    )
    assert [(b.language, b.code, b.closed) for b in blocks] == [
        ("python", "a = 1", True),
        ("python", "b = 2", True),
        ("", "c = 3", True),
        ("js", "d", True),
    ]
    infos = ["python3.11 title=a.py", "{.python}", "python:main.py", "c++", "", " js", "Python"]
    text = "".join(f"```{info}\nx\n```\n" for info in infos)
    assert [b.language for b in fenced_blocks(text)] == ["python3", "python", "python", "c", "", "js", "python"]
    assert fenced_blocks("```python\nx = 1")[0].closed is False
    assert fenced_blocks("no fence") == []


def test_bad_tests_argument_is_refused():
    with pytest.raises(ValueError, match="tests must be None or a list of test statements"):
        extract_code(RIGHT_ADD, "assert add(1, 2) == 3")
    with pytest.raises(ValueError, match="tests must be None or a list of test statements"):
        extract_code(RIGHT_ADD, [1, 2])
    assert extract_code(None, ADD) == "" and extract_code(42) == ""


def test_the_built_in_task_completions_come_out_unchanged():
    data = CodeTask().build_datasets(num_train=60, num_rl=10, num_test=10, seed=0)
    for row in data["sft"]:
        assert extract_code(row["completion"], row["tests"]) == row["completion"]
        assert extract_code(row["completion"]) == row["completion"]
