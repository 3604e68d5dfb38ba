"""The README's first Python example is the one users copy: it must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_trainer_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes outputs/ relative to the working directory
    example = _python_blocks()[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    history = namespace["trainer"].state.log_history
    # It trained with the preset it names, and logged the diagnostics the README promises beside the loss.
    assert namespace["args"].shaping.beta == -0.25
    logged = [h for h in history if "loss" in h]
    assert logged and all(key in logged[-1] for key in ("nll", "entropy", "tail_mass", "perplexity"))
    # it saved the model where the second example (stage 2) loads it
    (stage2,) = re.findall(r'model="([^"]+)"', _python_blocks()[1])
    assert (tmp_path / stage2 / "config.json").is_file() and (tmp_path / stage2 / "tokenizer_config.json").is_file()
