"""benchmarks/gpu_check.py --dry_run: the GPU check's plumbing on CPU at tiny sizes (every check runs and records
its figures; the float32 fused loss agrees with float64; RESULTS.md is left alone)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    results_before = (ROOT / "benchmarks" / "RESULTS.md").read_bytes()

    assert gpu_check.main(["--dry_run", "--out_dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    assert set(checks) == {"accuracy", "loss", "sft_step", "grpo"}
    assert all("error" not in check for check in checks.values()), checks
    errors = checks["accuracy"]["result"]["relative_errors"]
    assert len(errors) == 10  # 2 dtypes x 5 presets
    for key, error in errors.items():
        # float32 agrees with float64 to rounding; bfloat16 within its 8-bit mantissa (tests/test_fused_loss.py)
        assert max(error.values()) < (1e-5 if key.startswith("float32/") else 2e-2), (key, error)
    timed = checks["loss"]["result"]["results"]
    assert {key.rsplit("/", 1)[1] for key in timed} == {"ce_full", "trl_chunked", "fused_ce", "fused_tail_penalty"}
    assert all(r["time_min"] > 0 for r in timed.values())
    sft = checks["sft_step"]["result"]
    assert sft["ce_vs_stock_max_relative_loss_gap"] < 1e-5  # float32 on CPU: the ce shaping is stock's loss
    assert all(len(run["losses"]) == 2 for run in sft["runs"].values())
    grpo = checks["grpo"]["result"]
    assert grpo["steps"] == 1 and grpo["logged"][0]["kl_to_prior"] is not None
    assert grpo["logged"][0]["aux_shaped_loss"] > 0
    section = (tmp_path / "gpu_check.md").read_text()
    assert section.startswith("## GPU check") and "float32/tail_penalty" in section and "shaped_ce" in section
    assert (ROOT / "benchmarks" / "RESULTS.md").read_bytes() == results_before
