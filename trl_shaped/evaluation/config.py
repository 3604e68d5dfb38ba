"""`EvalConfig`: the settings of `evaluate` and `trl-shaped eval`, checked when the config is built."""

import math
import numbers
from dataclasses import dataclass, field

from .metrics import as_integer
from .vllm_sampling import INSTALL_HINT, vllm_available

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class EvalConfig:
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
            the data) gives the held-out text of the diagnostics.
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
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub name or local path of the model."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub name, local directory, or data file (.json/.jsonl/.csv/.parquet/.txt) to evaluate."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Dataset split to evaluate."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold answers."})
    completion_column: str = field(
        default="completion",
        metadata={"help": "Column holding reference completions: the held-out text of the diagnostics, if present."},
    )
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

    def __post_init__(self):
        self.num_samples = as_integer("num_samples", self.num_samples, minimum=1)
        self.max_new_tokens = as_integer("max_new_tokens", self.max_new_tokens, minimum=1)
        self.batch_size = as_integer("batch_size", self.batch_size, minimum=1)
        self.diagnostics_top_k = as_integer("diagnostics_top_k", self.diagnostics_top_k, minimum=1)
        self.diagnostics_batch_size = as_integer("diagnostics_batch_size", self.diagnostics_batch_size, minimum=1)
        self.seed = as_integer("seed", self.seed, minimum=0)
        if self.max_problems is not None:
            self.max_problems = as_integer("max_problems", self.max_problems, minimum=1, where="or None")
        if self.diagnostics_max_length is not None:
            self.diagnostics_max_length = as_integer(
                "diagnostics_max_length", self.diagnostics_max_length, minimum=2, where="or None"
            )
        if self.vllm_max_model_len is not None:
            self.vllm_max_model_len = as_integer("vllm_max_model_len", self.vllm_max_model_len, minimum=2)
        self.temperature = _real("temperature", self.temperature, lambda v: v >= 0, ">= 0")
        self.top_p = _real("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
        self.vllm_gpu_memory_utilization = _real(
            "vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, lambda v: 0 < v <= 1, "in (0, 1]"
        )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
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
        non_integral = [k for k in values if _not_integral(k)]
        if non_integral:
            raise ValueError(f"pass_k values must be integers in [1, num_samples={n}], got {non_integral}")
        bad = [k for k in values if not 1 <= int(k) <= n]
        if bad:
            raise ValueError(f"pass_k values must be in [1, num_samples={n}], got {bad}")
        return sorted({int(k) for k in values})


def _not_integral(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return True
    return not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer())


def _real(name: str, value, ok, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {allowed} (a finite number), got {value!r}")
    return float(value)
