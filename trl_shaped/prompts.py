"""Prompt templates: one per domain, used alike by `trl-shaped grpo` and `trl-shaped eval`.

A template says how a dataset row becomes the prompt a model sees: an optional system prompt, an optional
instruction added after the problem (the answer format the judge reads), whether the chat template is applied, and
the stop sequences that end a completion. Both stages build their prompts with `build_prompt`, so RL optimises the
prompt that evaluation measures:

    PromptTemplate(system_prompt, instruction, chat_template, stop_sequences)
    PROMPT_TEMPLATES   {"plain", "math", "code", "logic"} -> PromptTemplate
    resolve_template(name, system_prompt=..., instruction=..., chat_template=..., stop_sequences=...)
    build_prompt(problem, template, tokenizer)    the text (chat template off) or TRL's conversational messages (on)
    format_rows(rows, template, tokenizer, prompt_column, answer_column)   rows with TRL's `prompt` / `answer` columns
    PromptArguments    the template's keys as config fields, shared by `EvalConfig` and `trl-shaped grpo`'s arguments

With the chat template on, the prompt is a list of ``{"role", "content"}`` messages (TRL applies the tokenizer's chat
template and the generation prompt itself, and hands reward functions conversational completions); off, it is plain
text. ``chat_template="auto"`` (the domain presets' default) means on when the tokenizer has a chat template.
"""

from dataclasses import dataclass, field, replace

# reasoning-gym's own answer-format system prompt (`reasoning_gym.utils.SYSTEM_PROMPTS["default"]`, reasoning-gym
# 0.1.x), copied so that importing the templates does not import reasoning-gym (tests/test_prompts.py checks the copy).
REASONING_GYM_SYSTEM_PROMPT = (
    "Given a problem, your task is to answer the question by thinking step-by-step in a clear and specific manner.\n"
    "Once you have thought about the reasoning process, provide the answer in the following format:\n"
    "<answer>answer here</answer>\n"
    "Do not explain your reasoning inside the answer tags, provide only the final answer. When an example is "
    "provided, you should strictly follow the format of the output/answer in that example.\n"
)
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Write a complete Python solution and put it in a single ```python code block at the end of your answer."
)
CHAT_TEMPLATE_CHOICES = ("auto", "true", "false")


def check_chat_template(value) -> str:
    """`value` as one of ``"auto"``, ``"true"``, ``"false"`` (booleans and their spellings accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower() if isinstance(value, str) else None
    text = {"on": "true", "yes": "true", "1": "true", "off": "false", "no": "false", "0": "false"}.get(text, text)
    if text not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat_template must be one of {list(CHAT_TEMPLATE_CHOICES)} (or true/false), got {value!r}")
    return text


def check_stop_sequences(value) -> tuple[str, ...]:
    """`value` (None, a string or a list of non-empty strings) as a tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"stop_sequences must be a list of non-empty strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class PromptTemplate:
    """How a problem becomes a prompt, the same for RL and evaluation.

    Args:
        system_prompt (`str`, *optional*): the system message (chat template on) or the text before the problem
            (off, followed by a blank line).
        instruction (`str`, *optional*): appended to the problem after a newline, e.g. the answer format the judge
            reads (``\\boxed{}`` for math).
        chat_template (`str`): ``"auto"`` (on when the tokenizer has a chat template), ``"true"`` or ``"false"``;
            `True` / `False` are accepted.
        stop_sequences (`tuple[str, ...]`): strings that end a completion (kept at its end): TRL's
            `generation_kwargs` in GRPO (vLLM's `stop`, transformers' `stop_strings`) and the evaluator's sampling.
    """

    system_prompt: str | None = None
    instruction: str | None = None
    chat_template: str = "auto"
    stop_sequences: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "chat_template", check_chat_template(self.chat_template))
        object.__setattr__(self, "stop_sequences", check_stop_sequences(self.stop_sequences))
        for name in ("system_prompt", "instruction"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or None, got {type(value).__name__}")

    def uses_chat(self, tokenizer=None) -> bool:
        """Whether prompts are chat messages: ``"true"``, or ``"auto"`` with a tokenizer that has a chat template."""
        if self.chat_template == "auto":
            return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        return self.chat_template == "true"


PROMPT_TEMPLATES = {
    # the row's prompt as it is: no system prompt, no instruction, no chat template (the recipes' plain-text rows)
    "plain": PromptTemplate(chat_template="false"),
    "math": PromptTemplate(instruction=MATH_INSTRUCTION),
    "code": PromptTemplate(instruction=CODE_INSTRUCTION),
    "logic": PromptTemplate(system_prompt=REASONING_GYM_SYSTEM_PROMPT),
}
DEFAULT_TEMPLATE = "plain"


def resolve_template(
    name: str | None = None,
    *,
    system_prompt: str | None = None,
    instruction: str | None = None,
    chat_template=None,
    stop_sequences=None,
) -> PromptTemplate:
    """The preset `name` (default ``plain``) with the given settings replacing its own (None keeps the preset's).

    Raises:
        ValueError: naming `prompt_template` and the presets, or the bad setting.
    """
    name = DEFAULT_TEMPLATE if name is None else name
    if name not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt_template must be one of {sorted(PROMPT_TEMPLATES)}, got {name!r}")
    changes = dict(system_prompt=system_prompt, instruction=instruction, chat_template=chat_template)
    changes["stop_sequences"] = None if stop_sequences is None else check_stop_sequences(stop_sequences)
    return replace(PROMPT_TEMPLATES[name], **{k: v for k, v in changes.items() if v is not None})


@dataclass
class PromptArguments:
    """The prompt template's keys as config fields: `trl-shaped eval` (`EvalConfig`) and `trl-shaped grpo` take the
    same ones, so both stages build the same prompts.

    Args:
        prompt_template (`str`, defaults to ``"plain"``): the domain's preset, a name of `PROMPT_TEMPLATES`.
        system_prompt, instruction (`str`, *optional*), chat_template (`str`: auto/true/false, *optional*),
            stop_sequences (`list[str]`, *optional*): replace the preset's own (`PromptTemplate`).
    """

    prompt_template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={
            "help": "Prompt template, the same in trl-shaped grpo and trl-shaped eval: the system prompt, instruction, "
            "chat template and stop sequences of a domain.",
            "choices": sorted(PROMPT_TEMPLATES),
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt (replaces the template's)."})
    instruction: str | None = field(
        default=None, metadata={"help": "Instruction added after the problem (replaces the template's)."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "Apply the tokenizer's chat template: auto (when it has one), true or false (default: the "
                  "template's)."},
    )  # fmt: skip
    stop_sequences: list[str] | None = field(
        default=None, metadata={"help": "Strings that end a completion (replaces the template's)."}
    )

    @property
    def template(self) -> PromptTemplate:
        """The `PromptTemplate` of these settings: the preset with the given keys replacing its own."""
        return resolve_template(
            self.prompt_template,
            system_prompt=self.system_prompt,
            instruction=self.instruction,
            chat_template=self.chat_template,
            stop_sequences=self.stop_sequences,
        )


def build_prompt(problem, template: PromptTemplate, tokenizer=None):
    """The prompt of one problem: plain text, or TRL's conversational form (a list of messages) when the template's
    chat template is on for `tokenizer`.

    Args:
        problem (`str` or `list[dict]`): the row's prompt column; a list of messages is a conversation already (and
            stays one whatever `chat_template` says: messages have no other rendering): the system prompt is put
            first when it has none and the instruction is added to its last user message.
        template (`PromptTemplate`): the domain's template.
        tokenizer (*optional*): decides ``chat_template="auto"``.

    Raises:
        ValueError: for a problem that is neither a string nor a list of messages.
    """
    if isinstance(problem, str):
        text = problem if not template.instruction else f"{problem.rstrip()}\n{template.instruction}"
        if not template.uses_chat(tokenizer):
            return text if not template.system_prompt else f"{template.system_prompt.rstrip()}\n\n{text}"
        messages = [{"role": "user", "content": text}]
    elif isinstance(problem, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in problem):
        messages = [dict(m) for m in problem]
        if template.instruction:
            users = [i for i, m in enumerate(messages) if m["role"] == "user" and isinstance(m.get("content"), str)]
            if users:
                last = messages[users[-1]]
                last["content"] = f"{last['content'].rstrip()}\n{template.instruction}"
    else:
        raise ValueError(f"a prompt must be a string or a list of chat messages, got {type(problem).__name__}")
    if template.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": template.system_prompt})
    return messages


def format_rows(rows, template: PromptTemplate, tokenizer=None, *, prompt_column="prompt", answer_column="answer"):
    """A `datasets.Dataset` (or a list of dicts) with TRL's columns: `prompt` built by `build_prompt` from
    `prompt_column`, and `answer` (as text; None stays None) from `answer_column` when the rows have it. The other
    columns are kept (they reach the reward functions).

    Raises:
        ValueError: naming `prompt_column` and the columns there are, when the rows lack it.
    """
    columns = list(rows.column_names or []) if hasattr(rows, "column_names") else list(rows[0]) if rows else []
    if columns and prompt_column not in columns:  # (a streamed dataset may not know its columns)
        raise ValueError(f"prompt_column {prompt_column!r} is not a column of the data; columns: {sorted(columns)}")

    def convert(row: dict) -> dict:
        out = dict(row)
        out["prompt"] = build_prompt(row[prompt_column], template, tokenizer)
        if answer_column in row:
            value = row[answer_column]
            out["answer"] = None if value is None else str(value)
        return out

    if hasattr(rows, "map"):  # a datasets.Dataset (the GRPO script's split)
        if answer_column in columns and "answer" in columns:  # a column keeps its type through `map`: make it text
            from datasets import Value

            rows = rows.cast_column("answer", Value("string"))
        return rows.map(convert)
    return [convert(dict(r)) for r in rows]


def truncate_at_stop(text: str, stop_sequences) -> str:
    """`text` up to and including the first of `stop_sequences` it contains (unchanged when none occurs): what a
    stop string leaves of a completion (transformers keeps the stop string; vLLM is asked to keep it as well)."""
    ends = [text.find(s) + len(s) for s in stop_sequences or () if s in text]
    return text[: min(ends)] if ends else text
