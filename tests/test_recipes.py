"""recipes/: every YAML parses with its script's parser and says what the paper ran; LoRA trains adapters."""

import dataclasses
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

from trl_shaped import PAPER_PRESETS, ShapedGRPOConfig
from trl_shaped.cli import dispatch
from trl_shaped.evaluation import EvalConfig
from trl_shaped.rewards import exact_answer_reward

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
NO_GPU = ["--bf16", "false", "--use_cpu", "true"]  # the GPU recipes ask for bf16, which a CPU-only host refuses


def _load(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(script, yaml_name, *extra):
    module = importlib.import_module(f"trl_shaped.scripts.{script}")
    return module.make_parser().parse_args_and_config(["--config", str(RECIPES / yaml_name), *extra])


def test_every_yaml_is_covered():
    tested = {
        "stage1.yaml", "rl_paper.yaml", "sft_lora_gsm8k.yaml", "eval_paper.yaml", "tiny_sft.yaml", "tiny_grpo.yaml",
        "tiny_eval.yaml", "demo.yaml", "demo_quick.yaml", "demo_all_presets.yaml", "study_tiny.yaml", "study_qwen3.yaml",
        "eval_math.yaml", "rl_code.yaml", "eval_code.yaml", "study_code.yaml", "study_qwen3_code.yaml", "rl_logic.yaml",
        "eval_logic.yaml", "study_logic.yaml", "study_claim.yaml", "study_claim_quick.yaml",
        "midtrain.yaml",
        "eval_suite.yaml", "rl_math.yaml",  # tests/test_prompts.py, tests/test_eval_suite.py
    }  # fmt: skip
    assert {p.name for p in RECIPES.glob("*.yaml")} == tested


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
def test_stage1_recipe_takes_each_paper_preset_with_its_optimiser(preset):
    _, args, model_args, _ = _parse("sft", "stage1.yaml", "--shaping_preset", preset, *NO_GPU)
    assert args.shaping == PAPER_PRESETS[preset]
    assert args.optim == "adamw_torch" and args.weight_decay == 0.1 and args.max_grad_norm == 1.0
    assert args.lr_scheduler_type == "warmup_stable_decay" and args.learning_rate == 3e-4
    assert 0 < args.warmup_steps < 1  # a ratio of the run
    assert args.lr_scheduler_kwargs["min_lr_ratio"] == 0.1  # 3e-4 -> 3e-5, as the paper's mid-training ends
    assert model_args.model_name_or_path == "Qwen/Qwen3-0.6B-Base"


def test_stage1_recipe_alone_is_cross_entropy():
    _, args, _, _ = _parse("sft", "stage1.yaml", *NO_GPU)
    assert args.shaping == PAPER_PRESETS["ce"] and args.output_dir == "runs/stage1"


def test_midtrain_recipe_has_the_paper_mid_training_settings():
    _, args, model_args, _ = _parse("sft", "midtrain.yaml", "--shaping_preset", "precision", *NO_GPU)
    assert args.shaping == PAPER_PRESETS["precision"]  # carried over from stage 1 on the command line
    assert args.max_length == 16384 and args.packing
    assert args.model_init_kwargs["rope_parameters"]["rope_theta"] == 1e6
    assert args.model_init_kwargs["max_position_embeddings"] == 16384
    assert args.learning_rate == 3e-4 and args.lr_scheduler_type == "cosine_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}  # 3e-4 -> 3e-5
    assert model_args.model_name_or_path == "runs/stage1"


def test_midtrain_recipe_loads_a_stage1_checkpoint_with_the_new_rope_base(tmp_path, tiny_run_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    stage1 = tiny_run_dir / "model"
    assert AutoConfig.from_pretrained(stage1).rope_parameters["rope_theta"] == 1e4
    trainer = dispatch([
        "sft", "--config", str(RECIPES / "midtrain.yaml"), *NO_GPU, "--shaping_preset", "precision",
        "--model_name_or_path", str(stage1), "--dtype", "float32", "--dataset_streaming", "false",
        "--dataset_name", "json", "--dataset_data_files", f"train={tiny_run_dir / 'data' / 'sft.jsonl'}",
        "--max_steps", "1", "--max_length", "64", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--activation_checkpointing", "false", "--report_to", "none",
        "--output_dir", str(tmp_path / "midtrain"),
    ])  # fmt: skip
    model = trainer.model
    assert model.config.rope_parameters["rope_theta"] == 1e6 and model.config.max_position_embeddings == 16384
    # the rotary embedding is built from the new base: inv_freq_i = base^(-2i/d)
    inv_freq = model.model.rotary_emb.inv_freq
    dims = torch.arange(0, 2 * inv_freq.numel(), 2, dtype=torch.float32) / (2 * inv_freq.numel())
    torch.testing.assert_close(inv_freq, 1e6 ** (-dims))
    # saved with the result, so the RL stage loads the new base and length
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "midtrain").config
    assert saved.rope_parameters["rope_theta"] == 1e6 and saved.max_position_embeddings == 16384


def test_rl_recipe_is_the_paper_recipe():
    script_args, args, _, _ = _parse("grpo", "rl_paper.yaml", *NO_GPU)
    for name, value in ShapedGRPOConfig.PAPER_RECIPE.items():
        assert getattr(args, name) == value, name
    assert script_args.reward_funcs == ["exact"]


def _eval_config(yaml_name):
    from trl_shaped.scripts.eval import make_parser

    (config,) = make_parser().parse_args_and_config(["--config", str(RECIPES / yaml_name)])
    return config


def test_eval_recipe_is_the_paper_protocol():
    config = _eval_config("eval_paper.yaml")
    assert (config.num_samples, config.temperature, config.top_p) == (128, 0.7, 0.95)
    assert max(config.pass_k) == 64
    assert config.judge == "exact"  # the judge of rl_paper.yaml's reward


# The protocol every domain's evaluation recipe keeps (eval_paper.yaml's), whatever its judge.
PROTOCOL = ("num_samples", "temperature", "top_p", "pass_k", "diagnostics_top_k", "seed")


def test_math_eval_recipe_is_the_paper_protocol_with_the_math_judge():
    config, paper = _eval_config("eval_math.yaml"), _eval_config("eval_paper.yaml")
    assert {name: getattr(config, name) for name in PROTOCOL} == {name: getattr(paper, name) for name in PROTOCOL}
    assert config.judge == "math" and (config.prompt_column, config.answer_column) == ("problem", "answer")


def test_code_recipes_are_the_paper_recipes_with_the_code_judge():
    import yaml

    script_args, args, _, _ = _parse("grpo", "rl_code.yaml", *NO_GPU)
    for name, value in ShapedGRPOConfig.PAPER_RECIPE.items():
        assert getattr(args, name) == value, name
    assert script_args.reward_funcs == ["code"]  # the same judge as eval_code.yaml
    # Building an EvalConfig resolves its judge, and the code judge needs the sandbox: compare the YAML's values with
    # the paper protocol's, and parse it in full where the code judge imports.
    recipe, paper = (yaml.safe_load((RECIPES / name).read_text()) for name in ("eval_code.yaml", "eval_paper.yaml"))
    assert recipe["judge"] == "code"
    assert {name: recipe.get(name) for name in PROTOCOL} == {name: paper.get(name) for name in PROTOCOL}
    assert set(recipe) <= {f.name for f in dataclasses.fields(EvalConfig)}
    if importlib.util.find_spec("trl_shaped.rewards.code") is not None:
        assert _eval_config("eval_code.yaml").judge == "code"


def test_demo_recipes_parse():
    from trl_shaped.scripts.demo import make_parser

    configs = {name: make_parser().parse_args_and_config(["--config", str(RECIPES / f"{name}.yaml")])[0]
               for name in ("demo", "demo_quick", "demo_all_presets")}  # fmt: skip
    assert configs["demo_quick"].quick and not configs["demo"].quick
    assert len(configs["demo_all_presets"].preset_names()) == 5


def test_prepare_gsm8k_row_format():
    row = _load("prepare_gsm8k").to_row(
        {"question": "Tom has 1,000 apples and buys 234 more. How many?", "answer": "1000+234=1234\n#### 1,234"}
    )
    assert row["answer"] == "1234" and row["prompt"].endswith("\nAnswer: ")
    assert exact_answer_reward([row["completion"]], [row["answer"]]) == [1.0]


def test_lora_recipe_trains_adapters_only(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tiny = _load("make_tiny").make_tiny(tmp_path / "tiny", num_train=20, num_test=2)
    base_before = AutoModelForCausalLM.from_pretrained(tiny / "model").state_dict()
    trainer = dispatch([
        "sft", "--config", str(RECIPES / "sft_lora_gsm8k.yaml"), *NO_GPU,
        "--model_name_or_path", str(tiny / "model"), "--dtype", "float32",
        "--dataset_data_files", f"train={tiny / 'data' / 'sft.jsonl'}", "--eval_strategy", "no",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--lr_scheduler_kwargs", '{"num_decay_steps": 1, "min_lr_ratio": 0.1}', "--report_to", "none",
        "--output_dir", str(tmp_path / "lora"),
    ])  # fmt: skip
    assert isinstance(trainer.model, PeftModel) and trainer.args.shaping == PAPER_PRESETS["precision"]
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert not (tmp_path / "lora" / "model.safetensors").exists()  # adapters only
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # merging the trained adapters changes the weights; the base model itself is untouched
    merged = trainer.model.merge_and_unload().state_dict()
    assert any(not torch.equal(merged[k], base_before[k]) for k in base_before if k in merged)
    assert all(
        torch.equal(v, base_before[k])
        for k, v in AutoModelForCausalLM.from_pretrained(tiny / "model").state_dict().items()
    )
