"""The command line with a careless or hostile `--config`: a usage error (exit status 2, one line naming the argument
and the file), never a traceback, for every subcommand, including ones added later."""

import os
import subprocess
import sys
import types

import pytest

from trl_shaped import cli
from trl_shaped.cli import SUBCOMMANDS, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bad_configs(tmp_path) -> dict:
    """name -> (the arguments after the subcommand, what the error line must say)."""
    (tmp_path / "unclosed.yaml").write_text("num_samples: [1, 2\nseed: 3\n")
    (tmp_path / "tabs.yaml").write_text("seed: 1\n\tnum_samples: 2\n")
    (tmp_path / "list.yaml").write_text("- seed\n- 1\n")
    (tmp_path / "scalar.yaml").write_text("just words\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "int_keys.yaml").write_text("1: 2\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00seed")
    (tmp_path / "ok.yaml").write_text("seed: 1\n")
    missing = str(tmp_path / "missing.yaml")
    return {
        "no value": (["--config"], "argument --config: expected one argument"),
        "flag as value": (["--config", "--seed", "1"], "argument --config: expected one argument"),
        "missing file": (["--config", missing], f"argument --config: can't open '{missing}': No such file"),
        "missing file, = form": ([f"--config={missing}"], f"can't open '{missing}'"),
        "a directory": (["--config", str(tmp_path)], "Is a directory"),
        "unclosed list": (["--config", str(tmp_path / "unclosed.yaml")], "unclosed.yaml' is not valid YAML at line"),
        "tab indent": (["--config", str(tmp_path / "tabs.yaml")], "tabs.yaml' is not valid YAML"),
        "a list": (["--config", str(tmp_path / "list.yaml")], "must hold a mapping of argument names to values"),
        "a scalar": (["--config", str(tmp_path / "scalar.yaml")], "not a str"),
        "empty": (["--config", str(tmp_path / "empty.yaml")], "empty.yaml' is empty"),
        "int keys": (["--config", str(tmp_path / "int_keys.yaml")], "keys that are not argument names: [1]"),
        "binary": (["--config", str(tmp_path / "binary.yaml")], "binary.yaml' is not a text (UTF-8) file"),
        "twice": (["--config", str(tmp_path / "ok.yaml"), "--config", str(tmp_path / "ok.yaml")], "more than once"),
    }


CASES = ["no value", "flag as value", "missing file", "missing file, = form", "a directory", "unclosed list",
         "tab indent", "a list", "a scalar", "empty", "int keys", "binary", "twice"]  # fmt: skip


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("subcommand", sorted(SUBCOMMANDS))
@pytest.mark.parametrize("case", CASES)
def test_a_bad_config_file_is_a_usage_error(subcommand, case, tmp_path, capsys):
    args, message = _bad_configs(tmp_path)[case]
    line = _usage_error([subcommand, *args], capsys)
    assert line.startswith(f"trl-shaped {subcommand}: error: ")
    assert message in line


@pytest.mark.parametrize("script", ["sft", "grpo", "eval", "demo"])
def test_the_scripts_parser_reports_it_too(script, tmp_path, capsys):
    # recipes/*.py and `python -m trl_shaped.scripts.<name>` go through parse_or_exit, not the dispatcher
    import importlib

    module = importlib.import_module(f"trl_shaped.scripts.{script}")
    with pytest.raises(SystemExit) as exit_info:
        module.run(["--config", str(tmp_path / "missing.yaml")], prog=f"recipes/{script}.py")
    assert exit_info.value.code == 2
    assert f"recipes/{script}.py: error: argument --config: can't open" in capsys.readouterr().err


def test_a_new_subcommand_gets_the_same_checks(tmp_path, capsys, monkeypatch):
    # A subcommand added later (a module with make_parser / run) needs no code of its own for this
    from trl import TrlParser

    from trl_shaped.scripts import parse_or_exit

    calls = []
    fake = types.ModuleType("trl_shaped.scripts.fake")
    fake.make_parser = lambda prog=None: TrlParser((), prog=prog)
    fake.run = lambda argv, prog=None: calls.append(parse_or_exit(fake.make_parser(prog), argv))
    monkeypatch.setitem(sys.modules, "trl_shaped.scripts.fake", fake)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", "a subcommand added later")
    line = _usage_error(["fake", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert line.startswith("trl-shaped fake: error: argument --config: can't open")
    assert calls == []  # the subcommand never ran
    (tmp_path / "ok.yaml").write_text("{}\n")
    main(["fake", "--config", str(tmp_path / "ok.yaml")])
    assert calls == [()]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accelerate_config"], "argument --accelerate_config: expected one argument"),
        (["--accelerate_config", "nowhere.yaml"], "argument --accelerate_config: 'nowhere.yaml' is not a file"),
    ],
)
def test_a_bad_accelerate_config_is_a_usage_error(args, message, capsys):
    for subcommand in cli.LAUNCHABLE:
        assert message in _usage_error([subcommand, *args], capsys)


def test_the_console_command_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: [1\n")
    done = subprocess.run(
        [sys.executable, "-m", "trl_shaped", "grpo", "--config", str(tmp_path / "bad.yaml")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"trl-shaped grpo: error: argument --config: '{tmp_path / 'bad.yaml'}' is not valid YAML at line 2")
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "argument --model_name_or_path is required: a hub name or a local model directory"),
        (["--model_name_or_path", "m"], "argument --dataset_name is required: a hub name, a local directory or a data"),
        (["--model_name_or_path", "m", "--dataset_name", ""], "argument --dataset_name is required"),
    ],
)
def test_eval_without_a_model_or_a_dataset_is_a_usage_error(args, message, capsys):
    line = _usage_error(["eval", *args], capsys)
    assert line.startswith("trl-shaped eval: error: ") and message in line


@pytest.mark.parametrize("subcommand", ["sft", "grpo"])
def test_a_resume_value_that_cannot_resume_is_a_usage_error(subcommand, tmp_path, capsys):
    run = ["--model_name_or_path", "m", "--output_dir", str(tmp_path / "run"), "--bf16", "false"]
    partial = tmp_path / "run" / "checkpoint-4"
    partial.mkdir(parents=True)  # a save that never finished: no trainer_state.json
    cases = {
        str(tmp_path / "nowhere"): "is not a checkpoint-<step> folder",
        str(partial): "has no trainer_state.json",
        "true": "no complete checkpoint in output_dir",
        "last": "no complete checkpoint in output_dir",
    }
    for value, message in cases.items():
        line = _usage_error([subcommand, *run, "--resume_from_checkpoint", value], capsys)
        assert line.startswith(f"trl-shaped {subcommand}: error: argument --resume_from_checkpoint: "), line
        assert message in line, line


def test_the_console_command_reports_eval_without_a_dataset_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "trl_shaped", "eval", "--model_name_or_path", "m"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (
        done.stderr.strip().splitlines()[-1].startswith("trl-shaped eval: error: argument --dataset_name is required")
    )
