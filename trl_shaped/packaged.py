"""The YAML recipes and accelerate configs that ship with the package, found from any working directory.

The repository keeps them in `recipes/` and `accelerate_configs/`, and the documented commands name them by those
relative paths (`trl-shaped sft --config recipes/stage1.yaml`, `--accelerate_config accelerate_configs/zero2.yaml`,
the study's default recipes). The package carries the same files under the same names (`trl_shaped/recipes` and
`trl_shaped/accelerate_configs` are links to the repository's folders, and a built wheel holds copies of their YAML
files as package data), so a path that does not exist where the command runs is looked up there: the commands work
from any directory of a checkout and after a plain `pip install`.
"""

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGED_FOLDERS = ("recipes", "accelerate_configs")


def packaged_path(path: str, probe: str | None = None) -> str:
    """`path` when it exists as given; else the packaged file of that name; else `path` unchanged (for the caller's
    own error).

    Args:
        path (`str`): a file path, absolute or relative to the working directory, e.g. `recipes/stage1.yaml`; only
            relative paths under `recipes/` or `accelerate_configs/` are looked up in the package.
        probe (`str`, *optional*): the file whose existence decides, when `path` is a template (the study's
            stage1_recipe with a `{preset}` field): `path` formatted for one case. Defaults to `path`.

    Returns:
        `str`: `path`, or the absolute path of the packaged file (the template rebased on the package for a `probe`).
    """
    probe = path if probe is None else probe
    if os.path.exists(probe) or os.path.isabs(path):
        return path
    parts = Path(os.path.normpath(path)).parts
    if len(parts) < 2 or parts[0] not in PACKAGED_FOLDERS:
        return path
    if not (PACKAGE_ROOT / os.path.normpath(probe)).is_file():
        return path
    return str(PACKAGE_ROOT / path)
