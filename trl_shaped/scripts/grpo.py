"""Stage 2: GRPO (RLVR) from a stage-1 checkpoint with `ShapedGRPOTrainer` (TRL's `trl/scripts/grpo.py` layout).

```bash
trl-shaped grpo --config recipes/rl_paper.yaml --model_name_or_path runs/stage1_precision
accelerate launch --config_file accelerate_configs/zero3.yaml recipes/grpo.py --config recipes/rl_paper.yaml
```
"""

import functools
from dataclasses import dataclass, field

from trl_shaped.prompts import PromptArguments, format_rows
from trl_shaped.rewards.judges import ALIASES, JUDGES, check_judge_args, get_judge
from trl_shaped.scripts import end_launched_process, make_trl_parser, run_script, train_and_save, write_log_history
from trl_shaped.scripts.data import ShapedScriptArguments
from trl_shaped.scripts.loading import split_or_fail, trainer_inputs


@dataclass
class ShapedGRPOScriptArguments(ShapedScriptArguments, PromptArguments):
    """Dataset arguments plus the reward functions and the prompt template (the same keys as `trl-shaped eval`).

    Args:
        reward_funcs (`list[str]`):
            Reward functions, the names `trl-shaped eval --judge` takes (`trl_shaped.rewards.get_judge`), so RL and
            evaluation score alike: judges (`exact`, `math`, `code`, `reasoning_gym`), their functions' names
            (`math_answer_reward`, ...), reward functions of `trl.rewards` (`accuracy_reward`), or dotted import paths
            (`my_pkg.rewards.my_reward`). The dataset's columns reach them as keyword arguments (`answer`, `tests`).
        judge_args (`dict`, *optional*):
            The reward functions' options, as `trl-shaped eval`'s `judge_args`: with one reward function its options
            (``{anchored: false}``); with several, reward function name -> its options.
        prompt_column, answer_column (`str`):
            The columns holding the problem and the gold answer; they become TRL's `prompt` and the judges' `answer`.
        prompt_template (`str`), system_prompt, instruction, chat_template, stop_sequences:
            The prompt template (`trl_shaped.prompts`), the same keys and meaning as `trl-shaped eval`'s.
        aux_dataset_split (`str`, *optional*):
            Split of the dataset holding supervised rows for the auxiliary shaped loss (`shaping_aux_coef > 0`).
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={
            "help": f"Reward functions, the names trl-shaped eval --judge takes: judges {sorted(JUDGES)}, their "
            f"function names {sorted(ALIASES)}, reward functions of trl.rewards (accuracy_reward), or dotted import "
            "paths (my_pkg.rewards.my_reward)."
        },
    )
    judge_args: dict | str | None = field(
        default=None,
        metadata={"help": "The reward functions' options (JSON on the command line), as trl-shaped eval's: one "
                  "reward function's options, or reward function name -> options when there are several."},
    )  # fmt: skip
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the problems."})
    answer_column: str = field(
        default="answer", metadata={"help": "Column holding the gold answers (the judges' `answer` argument)."}
    )
    aux_dataset_split: str | None = field(
        default=None,
        metadata={
            "help": "Split of the dataset with supervised (prompt-completion or text) rows for the auxiliary shaped "
            "loss (needs shaping_aux_coef > 0), e.g. `aux` with dataset_data_files `aux=data/sft.jsonl`."
        },
    )

    def __post_init__(self):
        self.judge_args = check_judge_args(self.judge_args)
        _ = self.template  # a bad template setting fails here, naming it
        resolve_reward_funcs(self.reward_funcs, self.judge_args)  # unknown names and options fail before loading


def resolve_reward_funcs(names: list[str], judge_args=None) -> list:
    """Reward callables for `names`, through `get_judge` as `trl-shaped eval --judge` resolves its judge, so RL and
    evaluation use one function per name; unknown names and options fail clearly.

    Args:
        names (`list[str]`): see `ShapedGRPOScriptArguments.reward_funcs`.
        judge_args (`dict`, *optional*): one reward function's options, or (several) name -> options.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("reward_funcs must name at least one reward function")
    judge_args = check_judge_args(judge_args)
    if len(names) == 1:
        per_func = {names[0]: judge_args}
    else:
        unknown = [key for key in judge_args if key not in names]
        if unknown:
            raise ValueError(
                f"judge_args: with several reward_funcs, judge_args maps each reward function's name (out of {names}) "
                f"to its options; {unknown} are not among them"
            )
        per_func = {name: check_judge_args(judge_args.get(name), f"judge_args[{name!r}]") for name in names}
    funcs = []
    for name in names:
        try:
            funcs.append(get_judge(name, per_func.get(name)))
        except ValueError as error:
            raise ValueError(f"reward_funcs: {error}") from None
    return funcs


def generation_stop_kwargs(stop_sequences, use_vllm: bool) -> dict:
    """What `GRPOConfig.generation_kwargs` needs for `stop_sequences`: vLLM's `stop` (the stop string kept in the
    output, as transformers keeps it), or transformers' `stop_strings` (see `bind_stop_tokenizer`)."""
    if not stop_sequences:
        return {}
    if use_vllm:
        return {"stop": list(stop_sequences), "include_stop_str_in_output": True}
    return {"stop_strings": list(stop_sequences)}


def bind_stop_tokenizer(model, tokenizer) -> None:
    """Let `model.generate` find the tokenizer that transformers' stop strings need: TRL calls `generate` without
    one, and `stop_strings` without a tokenizer is an error. An instance attribute, so it holds for the model that
    TRL unwraps for generation (DDP, DeepSpeed and peft keep this module)."""
    model.generate = functools.partial(model.generate, tokenizer=tokenizer)


def _template_tokenizer(template, model_name_or_path: str, trust_remote_code: bool):
    """The tokenizer that decides ``chat_template: auto`` (None when the template does not need one)."""
    if template.chat_template != "auto":
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)


def main(script_args, training_args, model_args, dataset_args=None):
    """Run GRPO from `model_args.model_name_or_path` (the stage-1 checkpoint: the drift diagnostics' prior, and the KL
    reference when beta > 0) and save it. The prompts are the prompt column through the template, as
    `trl-shaped eval` builds them; the template's stop sequences end each completion."""
    from trl_shaped import ShapedGRPOTrainer

    reward_funcs = resolve_reward_funcs(script_args.reward_funcs, script_args.judge_args)
    template = script_args.template
    if template.stop_sequences:
        stop = generation_stop_kwargs(template.stop_sequences, training_args.use_vllm)
        training_args.generation_kwargs = {**(training_args.generation_kwargs or {}), **stop}
    dataset, trainer_kwargs = trainer_inputs(
        script_args, training_args, model_args, dataset_args, model_help=" (the stage-1 checkpoint)"
    )
    # the prompts of the template (a plain template keeps them as they are) and `answer` as text, as the evaluation
    tokenizer = _template_tokenizer(template, model_args.model_name_or_path, training_args.trust_remote_code)
    for key in ("train_dataset", "eval_dataset"):
        if trainer_kwargs.get(key) is not None:
            trainer_kwargs[key] = format_rows(
                trainer_kwargs[key],
                template,
                tokenizer,
                prompt_column=script_args.prompt_column,
                answer_column=script_args.answer_column,
            )
    if script_args.aux_dataset_split is not None:
        trainer_kwargs["aux_dataset"] = split_or_fail(dataset, script_args.aux_dataset_split, "aux_dataset_split")
    trainer = ShapedGRPOTrainer(reward_funcs=reward_funcs, **trainer_kwargs)
    if template.stop_sequences and not training_args.use_vllm:
        bind_stop_tokenizer(trainer.model, trainer.processing_class)
    train_and_save(trainer, script_args, training_args)
    write_log_history(trainer, training_args.output_dir)  # the run's curves, with or without checkpoints
    return trainer


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig

    from trl_shaped import ShapedGRPOConfig

    return make_trl_parser((ShapedGRPOScriptArguments, ShapedGRPOConfig, ModelConfig, DatasetMixtureConfig), prog)


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides) and train."""
    return run_script(make_parser, main, argv, prog)


if __name__ == "__main__":
    run()
    end_launched_process()
