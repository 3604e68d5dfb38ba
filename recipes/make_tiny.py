"""Write a tiny local model and the demo's arithmetic data, so every recipe can run on a laptop with no hub access.

```bash
python recipes/make_tiny.py runs/tiny          # runs/tiny/model, runs/tiny/data/{sft,rl,test}.jsonl
accelerate launch --config_file accelerate_configs/cpu.yaml recipes/sft.py --config recipes/tiny_sft.yaml
```

The model is a randomly initialised Qwen3-architecture network with the character-level tokenizer of
`trl_shaped.tiny`; the data is `trl_shaped.tasks.arithmetic.build_datasets` written as JSON lines.
"""

import argparse
from pathlib import Path


def make_tiny(output_dir, *, num_train: int = 200, num_test: int = 20, hidden_size: int = 64, seed: int = 0) -> Path:
    """Save `<output_dir>/model` (model + tokenizer) and `<output_dir>/data/{sft,rl,test}.jsonl`; returns output_dir.

    Args:
        output_dir: where to write.
        num_train (`int`), num_test (`int`): problems of the generated task.
        hidden_size (`int`): width of the model (2 layers).
        seed (`int`): seed of the model initialisation and of the data.
    """
    from trl_shaped.tasks.arithmetic import build_datasets
    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    out = Path(output_dir)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=hidden_size, tokenizer=tokenizer, seed=seed)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, dataset in build_datasets(num_train=num_train, num_test=num_test, seed=seed).items():
        dataset.to_json(out / "data" / f"{split}.jsonl", lines=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default="runs/tiny")
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_test", type=int, default=20)
    args = parser.parse_args()
    print(make_tiny(args.output_dir, num_train=args.num_train, num_test=args.num_test))
