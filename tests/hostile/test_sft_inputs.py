"""Hostile inputs to ShapedSFTTrainer: each bad input fails before
training with a ValueError that names the argument, and a run with nothing to score logs no fake perfect model."""

import logging
import math

import pytest
from datasets import Dataset, IterableDataset

from trl_shaped.sft_config import ShapedSFTConfig
from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

TOK = build_char_tokenizer()
TEXTS = [f"{a}+{b}={a + b}" for a in range(6) for b in (3, 17)]


def model():
    return build_tiny_model(len(TOK), tokenizer=TOK, hidden_size=16, num_layers=1, seed=0)


def args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=False,
        disable_tqdm=True,
        shaping_preset="tail_penalty",
        shaping_top_k=5,
    )
    return ShapedSFTConfig(**{**defaults, **kwargs})


def trainer(tmp_path, train_dataset, config=None, **kwargs):
    return ShapedSFTTrainer(
        model=kwargs.pop("model", None) or model(),
        args=config or args(tmp_path),
        train_dataset=train_dataset,
        processing_class=TOK,
        **kwargs,
    )


def text(n=None):
    return Dataset.from_dict({"text": TEXTS[:n]})


# --- datasets SFTTrainer cannot prepare ---------------------------------------------------------------------------


def _empty_stream():
    return IterableDataset.from_generator(lambda: iter(()))


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: dict(train_dataset=Dataset.from_dict({"text": []})), "train_dataset"),
        (lambda: dict(train_dataset=_empty_stream()), "train_dataset"),  # was a bare StopIteration
        (lambda: dict(train_dataset=text(), eval_dataset=Dataset.from_dict({"text": []})), "eval_dataset"),
        (
            lambda: dict(train_dataset=text(), eval_dataset={"held_out": Dataset.from_dict({"text": []})}),
            "eval_dataset['held_out']",
        ),
    ],
)
def test_empty_dataset_names_the_argument(tmp_path, make, argument):
    with pytest.raises(ValueError, match="is empty") as error:
        trainer(tmp_path, **make())
    assert str(error.value).startswith(argument)


def test_empty_dataset_passed_to_evaluate(tmp_path):
    t = trainer(tmp_path, text())
    with pytest.raises(ValueError, match=r"^eval_dataset is empty"):
        t.evaluate(Dataset.from_dict({"text": []}))


@pytest.mark.parametrize(
    "rows, column, found",
    [
        ({"text": ["1+1=2", None, "2+2=4", None]}, "text", "2 of 4 rows hold None"),  # was an AttributeError
        ({"text": [None, None]}, "text", "2 of 2 rows hold null"),
        ({"text": [1, 2, 3]}, "text", "3 of 3 rows hold int64"),
        ({"body": ["1+1=2", None]}, "body", "1 of 2 rows hold None"),  # dataset_text_field="body"
        ({"prompt": ["1+1=", "2+2="], "completion": ["2", None]}, "completion", "1 of 2 rows hold None"),
        ({"prompt": [1, 2], "completion": ["2", "4"]}, "prompt", "2 of 2 rows hold int64"),
    ],
)
def test_non_string_values_name_the_column_and_count(tmp_path, rows, column, found):
    config = args(tmp_path, dataset_text_field="body") if "body" in rows else None
    with pytest.raises(ValueError) as error:
        trainer(tmp_path, Dataset.from_dict(rows), config=config)
    message = str(error.value)
    assert message.startswith("train_dataset") and f"column {column!r}" in message and found in message, message


def test_none_in_a_selected_view_counts_only_the_view(tmp_path):
    # `select` keeps the underlying table: the count must follow the rows the trainer would see
    dataset = Dataset.from_dict({"text": [None, "1+1=2", "2+2=4", None, "3+3=6"]}).select([1, 2, 3])
    with pytest.raises(ValueError, match="1 of 3 rows hold None"):
        trainer(tmp_path, dataset)
    trainer(tmp_path, dataset.select([0, 1]))  # no None left: accepted


def test_non_string_in_a_stream_is_named(tmp_path):
    stream = IterableDataset.from_generator(lambda: iter([{"text": 7}, {"text": "1+1=2"}]))
    with pytest.raises(ValueError, match="train_dataset column 'text'.*first row hold int"):
        trainer(tmp_path, stream)


def test_every_row_too_long_names_the_dataset_count_and_max_length(tmp_path):
    # completion_only_loss (the default for prompt-completion) and prompts longer than max_length: truncation leaves
    # no completion token in any row, so TRL drops them all; torch used to fail with num_samples=0
    long = Dataset.from_dict({"prompt": [f"{t} is the sum of what?" for t in TEXTS], "completion": ["yes"] * 12})
    with pytest.raises(ValueError) as error:
        trainer(tmp_path, long, config=args(tmp_path, max_length=8))
    message = str(error.value)
    assert message.startswith("12 of 12 rows of train_dataset were dropped") and "max_length=8" in message
    assert "'prompt' column" in message and "Increase `max_length`" in message
    with pytest.raises(ValueError, match="12 of 12 rows of eval_dataset were dropped"):
        # completion_only_loss is inferred from the train set, a text one here: ask for it
        trainer(tmp_path, text(), config=args(tmp_path, max_length=8, completion_only_loss=True), eval_dataset=long)


def test_some_rows_too_long_are_counted_in_a_warning(tmp_path, caplog):
    mixed = Dataset.from_dict(
        {"prompt": ["1+1=", "2+2=", "a very long prompt that fills it=", "3+3="], "completion": ["2", "4", "x", "6"]}
    )
    with caplog.at_level(logging.WARNING, logger="trl_shaped.sft_trainer"):
        t = trainer(tmp_path, mixed, config=args(tmp_path, max_length=12))
    assert len(t.train_dataset) == 3
    assert any("1 of 4 rows of train_dataset were dropped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "rows, match",
    [
        ({"content": ["1+1=2"]}, "dataset_text_field"),
        ({"prompt": ["1+1="], "answer": ["2"]}, "'completion'"),
        # role/content turns under "conversations": stock SFTTrainer fails with KeyError 'text'
        ({"conversations": [[{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]]}, "text"),
    ],
)
def test_untrainable_layouts_say_what_is_needed(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match) as error:
        trainer(tmp_path, Dataset.from_dict(rows))
    assert str(error.value).startswith("train_dataset")


# --- every layout stock SFTTrainer accepts passes the up-front check -----------------------------------------------


def test_sharegpt_conversations_train(tmp_path):
    sharegpt = Dataset.from_dict(
        {
            "conversations": [
                [{"from": "human", "value": t.split("=")[0]}, {"from": "gpt", "value": t.split("=")[1]}] for t in TEXTS
            ]
        }
    )
    t = trainer(tmp_path, sharegpt)
    t.train()
    assert all(math.isfinite(e["loss"]) for e in t.state.log_history if "loss" in e)


# --- a bool softcap in the model config ---------------------------------------------------------------------------


def test_bool_softcap_in_model_config_is_refused(tmp_path):
    bad = model()
    bad.config.final_logit_softcapping = True  # would otherwise cap every logit at +-1.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        trainer(tmp_path, text(), model=bad)


# --- a logging window with no scored token -----------------------------------------------------------------------

DIAGNOSTICS = ("nll", "perplexity", "entropy", "topk_entropy", "topk_mass", "tail_mass", "mean_token_accuracy")


def test_empty_texts_log_no_diagnostics_and_warn_once(tmp_path, caplog):
    # "" + EOS is one token: nothing to predict after the shift, in any window
    empty = Dataset.from_dict({"text": [""] * 8})
    with caplog.at_level(logging.WARNING, logger="trl_shaped.sft_trainer"):
        t = trainer(tmp_path, empty, config=args(tmp_path, max_steps=3), eval_dataset=empty)
        t.train()
        metrics = t.evaluate()
    logged = [e for e in t.state.log_history if "loss" in e]
    assert len(logged) == 3
    for entry in logged:
        assert not set(DIAGNOSTICS) & set(entry) and math.isnan(entry["loss"]), entry
    assert not {f"eval_{k}" for k in DIAGNOSTICS} & set(metrics) and math.isnan(metrics["eval_loss"]), metrics
    assert all(p.isfinite().all() for p in t.model.parameters())  # nothing scored: no NaN reached the weights
    warnings = [r for r in caplog.records if "no scored token" in r.getMessage()]
    assert len(warnings) == 1


def test_eval_at_max_length_one_logs_no_diagnostics_but_train_windows_do(tmp_path):
    t = trainer(tmp_path, text(), config=args(tmp_path, max_length=1, max_steps=1))
    metrics = t.evaluate(text(4))  # rows of one token: nothing scored
    assert math.isnan(metrics["eval_loss"]) and not {f"eval_{k}" for k in DIAGNOSTICS} & set(metrics), metrics
    # a window that does score tokens still logs every diagnostic, finite
    t2 = trainer(tmp_path, text(), config=args(tmp_path, max_steps=1))
    t2.train()
    entry = next(e for e in t2.state.log_history if "loss" in e)
    assert all(math.isfinite(entry[k]) for k in DIAGNOSTICS) and entry["perplexity"] > 1
