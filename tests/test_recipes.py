"""The recipes ship in the package: `--config seed|mmaction|demo` by name, paths still win, the wheel holds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from c3dnet.cli import main
from c3dnet.engine.config import RECIPES, TrainConfig, explicit_keys, load_config, resolve_config
from c3dnet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = Path(str(files("c3dnet") / "configs"))


def test_every_name_resolves_to_its_packaged_file() -> None:
    assert sorted(RECIPES) == ["demo", "mmaction", "seed"]
    for name, recipe in RECIPES.items():
        path = resolve_config(name)
        assert path == PACKAGED / recipe.file and path.is_file(), name
    assert load_config("seed") == TrainConfig()  # the defaults are the seed's recipe
    mmaction = load_config("mmaction", ["optim.epochs=50"])
    assert (mmaction.optim.schedule, mmaction.optim.milestones, mmaction.data.batch_size) == ("multistep", [20, 40], 30)
    assert mmaction.optim.epochs == 50
    assert load_config("demo").model.width_mult == 0.125
    # The keys a named recipe sets are read from its file (the model fields pretrained weights may not fill in).
    assert {"model.variant", "optim.milestones", "train.average"} <= explicit_keys("mmaction")


def test_the_repository_configs_folder_is_the_packaged_one() -> None:
    """One copy of each recipe: configs/ at the root links to the package's folder."""
    assert (ROOT / "configs").resolve() == PACKAGED.resolve()
    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) == sorted(r.file for r in RECIPES.values())


def test_an_existing_path_wins_over_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("seed").write_text("optim:\n  epochs: 7\n")
    assert resolve_config("seed") == Path("seed")
    assert load_config("seed").optim.epochs == 7
    assert load_config("mmaction").optim.epochs == 45


def test_a_missing_path_names_the_packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Outside the repository, the README's old `--config configs/c3d_ucf101_seed.yaml` says what to pass."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^configs/c3d_ucf101_seed\.yaml: config file not found; its packaged "
                                          r"copy is --config seed"):
        load_config("configs/c3d_ucf101_seed.yaml")
    with pytest.raises(ConfigError, match=r"^sed: config file not found; pass a recipe name \(seed, mmaction, "
                                          r"demo\) or an existing YAML file"):
        load_config("sed")
    assert main(["train", "--config", "configs/c3d_ucf101_mmaction.yaml", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["c3d train: error: configs/c3d_ucf101_mmaction.yaml: config file not found; its packaged copy is "
                   "--config mmaction (`c3d train --help` lists the recipes)"]


def test_train_help_lists_the_names(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert recipe.file in line and recipe.about in line


@pytest.mark.slow
def test_the_wheel_holds_the_recipes(tmp_path: Path) -> None:
    """A wheel built from the sources (setuptools, no network) contains every recipe, byte for byte."""
    src = tmp_path / "src_tree"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("c3dnet-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for recipe in RECIPES.values():
            assert z.read(f"c3dnet/configs/{recipe.file}") == (PACKAGED / recipe.file).read_bytes(), recipe.file
