"""The README's Python examples are the ones users copy: they run as written, one after another in one namespace
(stage 1, stage 2 from stage 1's checkpoint, LoRA), and do what the README says they do.

`tests/test_doc_blocks.py` runs the README's other blocks and every block of the docs pages.
"""

import builtins

from test_doc_blocks import ROOT, blocks

README = ROOT / "README.md"


def _python_blocks():
    return [code for language, code, dry_run in blocks(README.read_text()) if language == "python" and not dry_run]


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write outputs/ relative to the working directory
    sft, grpo, lora = _python_blocks()
    namespace = {"__name__": "__main__", "__builtins__": builtins}

    exec(compile(sft, "README.md", "exec"), namespace)
    history = namespace["trainer"].state.log_history
    # It trained with the preset it names, and logged the diagnostics the README promises beside the loss.
    assert namespace["args"].shaping.beta == -0.25
    logged = [h for h in history if "loss" in h]
    assert logged and all(key in logged[-1] for key in ("nll", "entropy", "tail_mass", "perplexity"))
    # it saved the model where the second example (stage 2) loads it
    stage1 = tmp_path / "outputs" / "sft_precision"
    assert (stage1 / "config.json").is_file() and (stage1 / "tokenizer_config.json").is_file()

    exec(compile(grpo, "README.md", "exec"), namespace)
    grpo_trainer = namespace["trainer"]
    # GRPO started from stage 1's checkpoint, with the paper's recipe, and compared the policy with that prior
    assert grpo_trainer.model.config._name_or_path == "outputs/sft_precision"
    assert grpo_trainer.args.beta == 0.0 and grpo_trainer.args.dynamic_sampling
    assert grpo_trainer.prior_kind == "model"
    assert any("kl_to_prior" in h for h in grpo_trainer.state.log_history)

    exec(compile(lora, "README.md", "exec"), namespace)
    lora_trainer = namespace["trainer"]
    trainable = [name for name, p in lora_trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)  # only the adapters train
    assert lora_trainer.state.global_step == namespace["args"].max_steps
