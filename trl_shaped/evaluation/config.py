"""`EvalConfig`: the settings of `evaluate` and `trl-shaped eval`, checked when the config is built."""

from dataclasses import dataclass, field

from ..prompts import PromptArguments
from ..rewards.judges import DEFAULT_JUDGE, JUDGES, check_judge_args, get_judge
from ..validation import check_choice, check_int, check_real
from .tracking import check_report_to
from .vllm_sampling import INSTALL_HINT, vllm_available

DTYPES = ("auto", "bfloat16", "float16", "float32")
# (field, minimum, may be None)
_INTEGER_FIELDS = (
    ("num_samples", 1, False),
    ("max_new_tokens", 1, False),
    ("batch_size", 1, False),
    ("diagnostics_top_k", 1, False),
    ("diagnostics_batch_size", 1, False),
    ("seed", 0, False),
    ("max_problems", 1, True),
    ("diagnostics_max_length", 2, True),
    ("vllm_max_model_len", 2, True),
)


@dataclass
class EvalConfig(PromptArguments):
    """Configuration of `trl-shaped eval` and `evaluate`.

    Every bad value raises a ValueError naming the field and its allowed range when the config is built. Integer
    fields take integers (integral floats such as 4.0 too); strings are refused in Python (`num_samples="4"` is an
    error) while the command line converts its strings as usual.

    Args:
        model_name_or_path (`str`, *optional*): hub name or local directory of the model (for `trl-shaped eval`).
        dataset_name (`str`, *optional*): hub name, local directory, or a data file (.json/.jsonl/.csv/.parquet/.txt).
        dataset_config (`str`, *optional*): configuration name passed to `datasets.load_dataset`.
        dataset_split (`str`): split to evaluate.
        prompt_column, answer_column, completion_column (`str`): column names; the completion column (optional in
            the data) gives the held-out text of the diagnostics. The answer column reaches the judge as `answer`.
        prompt_template (`str`): the domain's prompt template, a name of `trl_shaped.prompts.PROMPT_TEMPLATES`
            (plain, math, code, logic), the same as `trl-shaped grpo`'s.
        system_prompt, instruction (`str`, *optional*), chat_template (`str`: auto/true/false, *optional*),
            stop_sequences (`list[str]`, *optional*): replace the template's own (`trl_shaped.prompts.PromptTemplate`).
        judge (`str`): what scores a completion, the same names as GRPO's `reward_funcs`: a name of
            `trl_shaped.rewards.JUDGES` (exact, math, code, reasoning_gym), a function's name (math_answer_reward,
            ...), a reward function of `trl.rewards` (accuracy_reward, ...) or a dotted import path. A sample is
            correct when its score is 1.0. It gets what GRPO hands a reward function: the prompts, the completions
            (conversational messages when the prompts are), `completion_ids`, `trainer_state` and every column but
            the prompt and completion columns.
        judge_args (`dict`, *optional*): the judge's options, as GRPO's `judge_args` (``{anchored: false}`` for
            math; ``{limits: {wall_time_s: 2}, all_or_nothing: true}`` for code).
        suite (`str`, *optional*): a suite YAML (`trl_shaped.evaluation.suite`): several benchmarks, one table.
        max_problems (`int`, *optional*): evaluate only the first problems.
        num_samples (`int`): n, completions per problem.
        temperature, top_p (`float`): sampling parameters (the paper: 0.7, 0.95 for base models).
        max_new_tokens (`int`): generation budget.
        pass_k (`list[int]`, *optional*): the k of Pass@k; default powers of two up to n, and n.
        batch_size (`int`): sequences per generate call.
        use_vllm (`bool`): sample with vLLM's offline engine instead of `generate` (needs the `vllm` extra).
        vllm_gpu_memory_utilization (`float`): share of GPU memory vLLM may take, in (0, 1].
        vllm_max_model_len (`int`, *optional*): vLLM's prompt + completion budget (None: the model's).
        diagnostics (`bool`): compute the distribution diagnostics on the held-out text.
        diagnostics_top_k (`int`), diagnostics_batch_size (`int`), diagnostics_max_length (`int`).
        seed (`int`), dtype (`str`), trust_remote_code (`bool`), output_dir (`str`), run_name (`str`),
        progress (`bool`): see the field help.
        report_to (`list[str]`): trackers the results are logged to once at the end, as TRL's `report_to`
            (trackio, wandb, tensorboard, all, none).
        project (`str`): the trackio / wandb project.
        tracker_run_name (`str`, *optional*): the run's name in the trackers (default: `run_name`).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub name or local path of the model."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub name, local directory, or data file (.json/.jsonl/.csv/.parquet/.txt) to evaluate."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Dataset split to evaluate."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    answer_column: str = field(
        default="answer", metadata={"help": "Column holding the gold answers (the judge's `answer` argument)."}
    )
    completion_column: str = field(
        default="completion",
        metadata={"help": "Column holding reference completions: the held-out text of the diagnostics, if present."},
    )
    judge: str = field(
        default=DEFAULT_JUDGE,
        metadata={
            "help": f"What scores a completion, the same names as GRPO's reward_funcs: one of {sorted(JUDGES)}, a "
            "function name (math_answer_reward, ...), a reward function of trl.rewards (accuracy_reward) or a dotted "
            "import path. A sample is correct when its score is 1.0."
        },
    )
    judge_args: dict | str | None = field(
        default=None,
        metadata={"help": "The judge's options as a mapping (JSON on the command line), the same as GRPO's, e.g. "
                  "'{\"anchored\": false}' for math or '{\"limits\": {\"wall_time_s\": 2}}' for code."},
    )  # fmt: skip
    suite: str | None = field(
        default=None,
        metadata={"help": "A suite YAML: several benchmarks (each with its data, judge, template, n, pass_k), one "
                  "table with the macro average; this config's values are the benchmarks' defaults."},
    )  # fmt: skip
    max_problems: int | None = field(default=None, metadata={"help": "Evaluate only the first this many problems."})
    num_samples: int = field(default=16, metadata={"help": "Completions sampled per problem (n of Avg@n, Cons@n)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold, in (0, 1]."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum tokens generated per completion."})
    pass_k: list[int] | None = field(
        default=None, metadata={"help": "k values of Pass@k, each in [1, num_samples]. Default: 1, 2, 4, ..., n."}
    )
    batch_size: int = field(default=64, metadata={"help": "Sequences per generate call."})
    use_vllm: bool = field(
        default=False,
        metadata={"help": f"Sample with vLLM's offline engine instead of transformers' generate ({INSTALL_HINT})."},
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.5,
        metadata={"help": "Share of GPU memory vLLM may take, in (0, 1] (the diagnostics' model shares it)."},
    )
    vllm_max_model_len: int | None = field(
        default=None, metadata={"help": "vLLM's prompt + completion budget in tokens (default: the model's)."}
    )
    diagnostics: bool = field(default=True, metadata={"help": "Compute distribution diagnostics on held-out text."})
    diagnostics_top_k: int = field(default=100, metadata={"help": "k of the top-k set of the diagnostics."})
    diagnostics_batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass of the diagnostics."})
    diagnostics_max_length: int | None = field(
        default=1024, metadata={"help": "Truncate diagnostic sequences to this many tokens."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed of the sampling; problem i is seeded from (seed, i)."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype when loading.", "choices": list(DTYPES)})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    output_dir: str = field(default="eval_results", metadata={"help": "Where the JSON, markdown and plots go."})
    run_name: str = field(default="eval", metadata={"help": "Label of this run in file names and plots."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "Trackers the results are logged to at the end: trackio, wandb, tensorboard, all or none."},
    )
    project: str = field(default="huggingface", metadata={"help": "The trackio / wandb project (as TRL's)."})
    tracker_run_name: str | None = field(
        default=None, metadata={"help": "The run's name in the trackers (default: run_name)."}
    )

    def __post_init__(self):
        # Integral floats (5.0, as YAML may hand them over) count as integers; the optional fields may be None.
        for name, minimum, optional in _INTEGER_FIELDS:
            value = getattr(self, name)
            if value is not None or not optional:
                note = "or None" if optional else ""
                setattr(self, name, check_int(name, value, minimum=minimum, note=note, integral_float=True))
        self.temperature = check_real("temperature", self.temperature, minimum=0)
        self.top_p = check_real("top_p", self.top_p, minimum=0, maximum=1, open_minimum=True)
        self.vllm_gpu_memory_utilization = check_real(
            "vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, minimum=0, maximum=1, open_minimum=True
        )
        check_choice("dtype", self.dtype, DTYPES)
        self.judge_args = check_judge_args(self.judge_args)
        get_judge(self.judge, self.judge_args)  # an unknown judge or option fails here, naming it
        _ = self.template  # a bad template or template setting fails here, naming it
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        check_report_to(self.report_to)
        if self.use_vllm and not vllm_available():
            raise ValueError(
                f"use_vllm=True needs vLLM, which is not installed: {INSTALL_HINT} on a machine with a supported GPU, "
                "or leave use_vllm off to sample with transformers' generate"
            )
        self.pass_k = self._check_pass_k()

    def _check_pass_k(self) -> list[int]:
        n = self.num_samples
        if self.pass_k is None:  # powers of two up to n, and n itself
            return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n})
        if isinstance(self.pass_k, (str, bytes)) or not hasattr(self.pass_k, "__iter__"):
            raise ValueError(f"pass_k must be a list of integers in [1, num_samples={n}], got {self.pass_k!r}")
        values = list(self.pass_k)
        if not values:
            raise ValueError(f"pass_k must hold at least one k in [1, num_samples={n}] (or be None), got []")
        non_integral = [k for k in values if not _is_integer(k)]
        if non_integral:
            raise ValueError(f"pass_k values must be integers in [1, num_samples={n}], got {non_integral}")
        bad = [k for k in values if not 1 <= int(k) <= n]
        if bad:
            raise ValueError(f"pass_k values must be in [1, num_samples={n}], got {bad}")
        return sorted({int(k) for k in values})


def _is_integer(value) -> bool:
    try:
        check_int("k", value, integral_float=True)
    except ValueError:
        return False
    return True
