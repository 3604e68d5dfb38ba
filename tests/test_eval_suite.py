"""`trl-shaped eval --suite`: one model over a math, a code and a logic benchmark, one table with the macro average,
each benchmark's report beside it, and every number equal to that benchmark evaluated alone."""

import json
import re

import pytest
import torch
import yaml

from trl_shaped.cli import dispatch
from trl_shaped.evaluation import EvalConfig
from trl_shaped.evaluation.suite import suite_configs
from trl_shaped.scripts.eval import suite_from_config
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

reasoning_gym = pytest.importorskip("reasoning_gym")
pytest.importorskip("math_verify")

# What the checkpoint writes to any prompt: right for the first problem of each benchmark, wrong for the second.
ANSWER = "```python\ndef add(a, b):\n    return a + b\n```\n<answer>Yes</answer> so \\boxed{5}"


def _writer(path):
    """A real checkpoint whose completion of any prompt is ANSWER (one token) and then eos (as in
    tests/test_eval_judges.py: zeroed layers, the LM head maps every token to the answer and the answer to eos)."""
    tokenizer = build_char_tokenizer()
    tokenizer.add_tokens([ANSWER])
    answer_id, vocab = tokenizer.convert_tokens_to_ids(ANSWER), len(tokenizer)
    model = build_tiny_model(vocab, hidden_size=vocab + (-vocab) % 8, num_layers=1, tokenizer=tokenizer)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab].copy_(torch.eye(vocab))
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer_id, :vocab] = 10.0
        model.lm_head.weight[answer_id, answer_id] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, answer_id] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A suite file over three tiny local benchmarks in their real columns, and the checkpoint."""
    root = tmp_path_factory.mktemp("suite")
    math = _jsonl(root / "math500.jsonl", [
        {"problem": "What is 2+3?", "solution": "2+3=\\boxed{5}", "answer": "5", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"},
        {"problem": "What is 2+4?", "solution": "2+4=\\boxed{6}", "answer": "6", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/2.json"},
    ])  # fmt: skip
    code = _jsonl(root / "mbpp.jsonl", [
        {"prompt": "Write add(a, b).", "tests": ["assert add(2, 3) == 5", "assert add(0, 0) == 0"]},
        {"prompt": "Write mul(a, b).", "tests": ["assert mul(2, 3) == 6"]},
    ])  # fmt: skip
    entries = list(reasoning_gym.create_dataset("syllogism", size=5, seed=3))
    yes, no = entries[0], entries[4]
    assert (yes["answer"], no["answer"]) == ("Yes", "No")
    logic = _jsonl(root / "syllogism.jsonl", [
        {"prompt": e["question"], "answer": e["answer"], "reasoning_gym": json.dumps(e)} for e in (yes, no)
    ])  # fmt: skip
    spec = {
        "num_samples": 2,
        "max_new_tokens": 3,
        "diagnostics": False,
        "progress": False,
        "benchmarks": [
            {"name": "math500", "dataset_name": math, "prompt_column": "problem", "completion_column": "solution",
             "judge": "math", "prompt_template": "math", "diagnostics": True},
            {"name": "mbpp", "dataset_name": code, "judge": "code", "prompt_template": "code",
             "judge_args": {"all_or_nothing": True, "limits": {"wall_time_s": 20}}},
            {"name": "syllogism", "dataset_name": logic, "judge": "reasoning_gym", "prompt_template": "logic",
             "num_samples": 4},
        ],
    }  # fmt: skip
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec, _writer(root / "writer")


def test_suite_writes_one_table_equal_to_each_benchmark_alone(suite, tmp_path):
    path, spec, writer = suite
    out = tmp_path / "suite"
    table = dispatch([
        "eval", "--suite", str(path), "--model_name_or_path", str(writer), "--output_dir", str(out),
        "--run_name", "paper", "--seed", "3",
    ])  # fmt: skip
    rows = table["benchmarks"]
    assert list(rows) == ["math500", "mbpp", "syllogism"]
    # the first problem of each benchmark is answered right, the second wrong, by every sample
    for name in rows:
        assert rows[name]["avg_at_n"] == rows[name]["cons_at_n"] == 0.5
    assert rows["syllogism"]["num_samples"] == 4 and set(rows["syllogism"]["pass_at_k"]) == {"1", "2", "4"}
    assert rows["mbpp"]["judge"] == "code" and rows["syllogism"]["judge"] == "reasoning_gym"
    # the macro average weighs each benchmark once; Pass@k over the k every benchmark reports
    assert table["avg_at_n"] == pytest.approx(sum(r["avg_at_n"] for r in rows.values()) / 3)
    assert set(table["pass_at_k"]) == {"1", "2"}
    assert table["pass_at_k"]["2"] == pytest.approx(sum(r["pass_at_k"]["2"] for r in rows.values()) / 3)
    assert table["diagnostics"] == table["results"]["math500"]["diagnostics"]  # the one benchmark with them
    # a flag on the command line holds for every benchmark; the suite's own settings for the rest
    settings = {name: result["settings"] for name, result in table["results"].items()}
    assert {s["seed"] for s in settings.values()} == {3}
    assert settings["mbpp"]["judge_args"] == {"all_or_nothing": True, "limits": {"wall_time_s": 20}}
    assert settings["syllogism"]["prompt_template"] == "logic" and settings["math500"]["prompt_column"] == "problem"

    # the files: the table (JSON + markdown) and every benchmark's own report beside it
    saved = json.loads((out / "paper.json").read_text())
    assert saved["avg_at_n"] == table["avg_at_n"] and list(saved["benchmarks"]) == list(rows)
    markdown = (out / "paper.md").read_text()
    assert "| **average** |" in markdown and "| syllogism | `reasoning_gym` | 2 | 4 | 50.00% |" in markdown
    for name in rows:
        assert json.loads((out / f"{name}.json").read_text())["avg_at_n"] == rows[name]["avg_at_n"]
        assert (out / f"{name}.md").is_file()

    # each benchmark evaluated alone with the same keys gives the same numbers
    for entry in spec["benchmarks"]:
        keys = {**{k: v for k, v in spec.items() if k != "benchmarks"}, **entry}
        argv = ["eval", "--model_name_or_path", str(writer), "--output_dir", str(tmp_path / entry["name"]),
                "--seed", "3"]  # fmt: skip
        for key, value in keys.items():
            if key == "name":
                continue
            argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
        alone = dispatch(argv)
        for metric in ("avg_at_n", "cons_at_n", "pass_at_k", "mean_score"):
            assert alone[metric] == table["results"][entry["name"]][metric], (entry["name"], metric)


def test_a_suite_recipe_runs_as_config_and_its_errors_are_clear(suite, tmp_path, capsys):
    path, spec, writer = suite
    assert suite_from_config(["--config", str(path), "--seed", "1"]) == ["--suite", str(path), "--seed", "1"]
    configs = suite_configs(EvalConfig(num_samples=8, suite=str(path)), path, explicit={"num_samples"})
    assert [c.num_samples for _, c in configs] == [8, 8, 8] and [c.pass_k for _, c in configs][0] == [1, 2, 4, 8]
    bad = tmp_path / "bad.yaml"
    cases = {
        "benchmarks: []": "must be a mapping with a non-empty `benchmarks` list",
        "benchmarks: [{name: a, judge: maths}]": "suite: benchmark 'a': judge must be one of",
        "benchmarks: [{name: a, dataset: x}]": "benchmark 'a' sets 'dataset', which is not a trl-shaped eval key",
        "benchmarks: [{name: a}, {name: a}]": r"benchmark names must be unique, \['a'\] repeat",
        "benchmarks: [{name: a, output_dir: x}]": "sets 'output_dir', which is set for the whole suite",
        "benchmarks: [{name: a, prompt_template: maths}]": "prompt_template must be one of",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            dispatch(["eval", "--suite", str(bad), "--model_name_or_path", str(writer)])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), message


def test_the_real_scale_studies_evaluate_through_the_suite(monkeypatch):
    from pathlib import Path

    from trl_shaped.scripts.study import make_parser
    from trl_shaped.study.commands import stage_commands

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the recipes name files relative to the repository root
    for name in ("study_qwen3.yaml", "study_qwen3_code.yaml"):
        (study,) = make_parser().parse_args_and_config(["--config", f"recipes/{name}"])
        commands = dict(stage_commands(study, "precision", 42, Path("cell")))
        for stage in ("eval_stage1", "eval_rl"):
            assert commands[stage][:3] == ["eval", "--suite", "recipes/eval_suite.yaml"], name
            assert "--dataset_name" not in commands[stage]
        # the suite's configs build from the recipe (every benchmark checked before a model is loaded)
        configs = suite_configs(EvalConfig(suite="recipes/eval_suite.yaml", run_name="eval"), "recipes/eval_suite.yaml")
        assert {c.judge for _, c in configs} == {"math", "code", "reasoning_gym"}
        assert {c.num_samples for _, c in configs} == {128} and {c.dtype for _, c in configs} == {"bfloat16"}
    (study,) = make_parser().parse_args_and_config(
        ["--config", "recipes/study_qwen3.yaml", "--eval_dataset", "data/gsm8k/test.jsonl"]
    )
    with pytest.raises(ValueError, match="cannot replace the data of the suite"):
        stage_commands(study, "precision", 42, Path("cell"))
