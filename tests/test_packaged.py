"""The recipes and accelerate configs ship with the package: a built wheel holds every YAML file of recipes/ and
accelerate_configs/, and a real-scale study's dry run works from another directory with that wheel installed."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trl_shaped.packaged import PACKAGE_ROOT, packaged_path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("recipes", "accelerate_configs")


def test_packaged_path_prefers_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = str(PACKAGE_ROOT / "recipes" / "stage1.yaml")
    assert packaged_path("recipes/stage1.yaml") == packaged  # nothing of that name here: the package's
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "stage1.yaml").write_text("learning_rate: 1.0\n")
    assert packaged_path("recipes/stage1.yaml") == "recipes/stage1.yaml"  # a user's own file wins
    # unknown names, other folders and absolute paths are left for the caller's error
    assert packaged_path("recipes/no_such.yaml") == "recipes/no_such.yaml"
    assert packaged_path("elsewhere/stage1.yaml") == "elsewhere/stage1.yaml"
    assert packaged_path("/abs/recipes/stage1.yaml") == "/abs/recipes/stage1.yaml"
    # a template is rebased on the package when the probe (one formatted case) is found there
    template = "recipes/{preset}.yaml"
    assert packaged_path(template, probe="recipes/stage1.yaml") == "recipes/{preset}.yaml"  # exists here
    shutil.rmtree(tmp_path / "recipes")
    assert packaged_path(template, probe="recipes/stage1.yaml") == str(PACKAGE_ROOT / template)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The project built as a wheel from a copy of its sources, unpacked as a plain (non-editable) install."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "trl_shaped", source / "trl_shaped", symlinks=True, ignore=ignore)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("trl_shaped-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_ships_every_recipe_and_accelerate_config(installed_wheel):
    for folder in FOLDERS:
        shipped = {p.name: p.read_bytes() for p in (installed_wheel / "trl_shaped" / folder).glob("*.yaml")}
        in_repo = {p.name: p.read_bytes() for p in (ROOT / folder).glob("*.yaml")}
        assert shipped == in_repo, folder
    assert not list((installed_wheel / "trl_shaped" / "recipes").glob("*.py"))  # data, not modules


def test_a_real_scale_dry_run_works_from_another_directory_after_install(installed_wheel, tiny_run_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(installed_wheel), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "trl_shaped", "study", "--model_name_or_path", str(tiny_run_dir / "model")]
    run = subprocess.run(
        [*command, "--presets", "ce,precision", "--num_seeds", "1", "--dry_run", "true", "--output_dir", "study"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    shipped = installed_wheel / "trl_shaped" / "recipes"
    configs = [line.split("--config ")[1].split()[0] for line in run.stdout.splitlines() if "--config " in line]
    assert len(configs) == 8  # 2 cells x (stage 1, its evaluation, GRPO, its evaluation)
    assert {Path(c).name for c in configs} == {"stage1.yaml", "rl_paper.yaml", "eval_paper.yaml"}
    assert all(Path(c).parent == shipped and Path(c).is_file() for c in configs), configs
    # the installed copy is the one imported, not the repository's (the interpreter itself may live in the repository)
    assert not any(str(ROOT / folder) in run.stdout for folder in ("trl_shaped", *FOLDERS))
