"""Set-up shared by every test file: an offline, single-threaded environment and the fixtures several files use.

Helpers that the launched scripts (tests/launch/, run by `accelerate launch` outside pytest) also need stay plain
functions in tests/_sft_common.py and tests/_grpo_common.py; fixtures live here. The `slow` and `distributed` markers
are registered in pyproject.toml; `bash scripts/test.sh -m "not slow and not distributed"` is the fast lane.
"""

import importlib.util
import os
from pathlib import Path

# Before any test module imports huggingface_hub or transformers (they read these at import time). setdefault: a
# value the caller exported wins. The launched processes inherit them through os.environ.
for name, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    # The models are tiny: on a shared CPU several threads per process mostly wait for each other
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(name, value)

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread per test, whatever OMP_NUM_THREADS said when torch was imported."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder of README.md, recipes/, accelerate_configs/)."""
    return ROOT


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """`recipes/make_tiny.py`'s output, built once per session: `model/` (a tiny Qwen3 and its character tokenizer)
    and `data/{sft,rl,test}.jsonl`. Read-only for the tests: a test writes its own runs under a subfolder or tmp_path.
    """
    spec = importlib.util.spec_from_file_location("make_tiny", ROOT / "recipes" / "make_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny(tmp_path_factory.mktemp("tiny"), num_train=40, num_test=4)
