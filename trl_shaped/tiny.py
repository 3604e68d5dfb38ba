"""Tiny models, character and byte-level BPE tokenizers built locally, for tests, the demo and benchmarks (no hub
needed)."""

import string
from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
DEFAULT_ALPHABET = string.digits + string.ascii_letters + " +-*/=()?.,:;!'\"\n#<>[]_"

# A minimal chat template so conversational datasets work with the character tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one id per character of `alphabet`, plus pad/eos/bos/unk.

    Args:
        alphabet (`str`): the characters to give ids to, in order; duplicates are ignored.
    """
    specials = list(SPECIAL_TOKENS.values())
    chars = [c for c in dict.fromkeys(alphabet) if c not in specials]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    # BPE without merges splits any string into single characters, spaces and newlines included.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.add_special_tokens(specials)
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Pre-tokenization of the BPE tokenizer: a "word" is a run of non-space characters with at most one leading space
# (as GPT-2 keeps the space with the word that follows); spaces and newlines otherwise stand alone. Unlike GPT-2's
# regex it does not split digits from punctuation, so that steps such as "14+16" can become single tokens and a small
# arithmetic corpus grows a vocabulary of hundreds of real subwords.
BPE_WORD = r" ?[^\s]+|\s+"


def build_bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` with the `tokenizers` library, plus pad/eos/bos/unk.

    Byte-level: the 256 byte symbols are always in the vocabulary, so any text encodes and decodes back exactly; the
    merges learned from `corpus` fill the rest of `vocab_size`.

    Args:
        corpus (`Iterable[str]`): the training texts.
        vocab_size (`int`): size of the vocabulary, special tokens and byte symbols included (at least 261); the
            trainer stops earlier only if the corpus has no pair left to merge.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = list(SPECIAL_TOKENS.values())
    if vocab_size < len(alphabet) + len(specials) + 1:
        minimum = len(alphabet) + len(specials) + 1
        raise ValueError(f"vocab_size must be >= {minimum} (bytes + specials + one merge), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BPE_WORD), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    vocab_size: int,
    *,
    architecture: str = "qwen3",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised causal LM of the Qwen3 or Llama architecture.

    Args:
        vocab_size (`int`): rows of the embedding and LM head.
        architecture (`str`): "qwen3" or "llama".
        hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings: the usual config fields.
        tie_word_embeddings (`bool`): share the embedding and LM-head weight.
        tokenizer: when given, its pad/bos/eos ids are written into the config.
        seed (`int`): seed of the initialisation, so that two calls give the same weights.
        dtype (`torch.dtype`): parameter dtype.
    """
    if architecture not in ("qwen3", "llama"):
        raise ValueError(f"architecture must be 'qwen3' or 'llama', got {architecture!r}")
    token_ids = {}
    if tokenizer is not None:
        token_ids = dict(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        **token_ids,
    )
    torch.manual_seed(seed)
    if architecture == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden_size // num_heads, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model = model.to(dtype)
    if tokenizer is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
