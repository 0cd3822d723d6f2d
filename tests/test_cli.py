"""One consistent CLI: verbosity anywhere, suggestions for unknown flags, shared flag names, plain progress lines."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from c3dnet.cli import COMMANDS, build_parser, main, suggest
from c3dnet.log import LineProgress


@pytest.mark.parametrize("argv, level", [
    (["-q", "info", "x"], logging.WARNING), (["info", "x", "-q"], logging.WARNING),
    (["-v", "info", "x"], logging.DEBUG), (["info", "-v", "x"], logging.DEBUG), (["info", "x"], logging.INFO),
])
def test_verbosity_before_or_after_the_command(argv, level, tmp_path):
    args = build_parser().parse_args([a if a != "x" else str(tmp_path / "none") for a in argv])
    assert getattr(args, "quiet", False) == (level == logging.WARNING)
    assert getattr(args, "verbose", False) == (level == logging.DEBUG)
    main([a if a != "x" else str(tmp_path / "none") for a in argv])  # an error (no such file): the level is set first
    assert logging.getLogger("c3dnet").level == level


def test_unknown_flags_suggest_the_flag_or_the_set_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "d", "--epochs", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --epochs (did you mean --set optim.epochs=...?)" in capsys.readouterr().err
    assert main(["extract", "--weights", "w", "--out", "o", "--no-progres", "v.mp4"]) == 2  # a prefix is taken
    assert "unrecognized" not in capsys.readouterr().err
    options = ["--batch-size", "--workers", "--skip-bad"]
    assert suggest("--batchsize", options, []) == "--batch-size"
    assert suggest("--lr", options, ["optim.lr", "optim.momentum"]) == "--set optim.lr=..."
    assert suggest("--learning-rate", options, ["optim.lr"]) is None


def _flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[command]
    return {o for a in sub._actions for o in a.option_strings}


def test_the_same_flags_for_the_same_meaning():
    for command in ("train", "test", "predict", "extract"):
        flags = _flags(command)
        assert {"--device", "--fp32", "--skip-bad"} <= flags, command
    for command in ("train", "test", "extract", "prepare", "predict"):
        assert "--no-progress" in _flags(command), command
    for command in ("train", "test", "extract", "prepare"):
        assert "--workers" in _flags(command), command
    assert "--no-amp" in _flags("test")  # the old name still works
    for command in COMMANDS:
        assert {"-v", "-q"} <= _flags(command), command


def test_c3dnet_is_installed_beside_c3d():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'c3d = "c3dnet.cli:main"' in scripts and 'c3dnet = "c3dnet.cli:main"' in scripts


def test_progress_lines_without_a_terminal():
    out = io.StringIO()
    bar = LineProgress(10, "extract", "video", stream=out, interval=0.0)
    bar.update(3)
    bar.set_postfix_str("120 frames/s")
    bar.update(7)
    bar.close()
    bar.close()  # once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("extract: 3/10 video in ") and lines[-1].endswith("(120 frames/s)")
    assert lines[-1].startswith("extract: 10/10 video")


def test_predict_prints_names_escaped_and_refuses_an_unusable_timeline_folder(tmp_path, capsys):
    import numpy as np
    import torch

    from c3dnet.data.encode import write_video
    from c3dnet.model import C3D
    from c3dnet.preprocess import Preprocess
    from c3dnet.weights import save_model
    from tests.conftest import tiny_config

    names = ["ok\x1b[2Jcleared", "b", "c", "d", "e"]  # an escape sequence that would clear the terminal
    torch.manual_seed(0)
    model = C3D(tiny_config(), preprocess=Preprocess(clip_len=8, crop_size=32, short_side=36), class_names=names)
    save_model(model, tmp_path / "w.safetensors")
    write_video(tmp_path / "v.avi", np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8))
    assert main(["predict", "--weights", str(tmp_path / "w.safetensors"), "--top-k", "5", str(tmp_path / "v.avi")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "ok\\x1b[2Jcleared" in out
    assert main(["predict", "--weights", str(tmp_path / "w.safetensors"), "--timeline", "/dev/null/x",
                 str(tmp_path / "v.avi")]) == 2
    assert "--timeline /dev/null/x: cannot create this folder (Not a directory)" in capsys.readouterr().err


def test_quiet_prints_no_progress_lines(tmp_path, capsys):
    """Without a terminal the bar prints plain lines; `-q` (warnings and errors only) prints none of them."""
    from tests.engine_helpers import make_frame_dataset, tiny_train_config

    data = make_frame_dataset(tmp_path / "data", train_per_class=4)
    (tmp_path / "r.yaml").write_text(tiny_train_config("optim.epochs=1", "train.val_every=0",
                                                       "train.progress=true").to_yaml())
    common = ["train", "--config", str(tmp_path / "r.yaml"), "--data", str(data), "--device", "cpu"]
    assert main([*common, "--work-dir", str(tmp_path / "loud")]) == 0
    assert re.search(r"^epoch 1/1: 3/3 it in \d+ s \(loss=", capsys.readouterr().err, re.MULTILINE)
    assert main(["-q", *common, "--work-dir", str(tmp_path / "quiet")]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith("trained 1 epochs (3 iterations)")
