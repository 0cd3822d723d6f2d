"""The synthetic time-reversal dataset: layout, determinism, the reversal property, caching, the CLI."""

from __future__ import annotations

import dataclasses
import json

import av
import numpy as np
import pytest

from c3dnet.cli import main
from c3dnet.data import sampling
from c3dnet.data.synthetic import (
    PAIRS,
    PARAMS_FILE,
    SynthParams,
    class_names,
    generate_synthetic,
    read_params,
    render_video,
    video_specs,
)
from c3dnet.errors import DataError

SMALL = SynthParams(num_pairs=2, videos_per_class=4, groups=2, test_groups=1, frames=25, height=32, width=32)


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", SMALL, workers=1)


def test_ucf101_layout(small_root):
    lists = small_root / "ucfTrainTestlist"
    class_ind = (lists / "classInd.txt").read_text().splitlines()
    assert class_ind == ["1 MoveDown", "2 MoveUp", "3 Grow", "4 Shrink"]
    train = [line.split() for line in (lists / "trainlist01.txt").read_text().splitlines()]
    test = [line.split() for line in (lists / "testlist01.txt").read_text().splitlines()]
    assert len(train) == 4 * 2 and len(test) == 4 * 2  # 4 classes x 2 videos per split
    assert all(len(fields) == 2 for fields in train) and all(len(fields) == 1 for fields in test)
    names = dict(line.split()[::-1] for line in class_ind)  # name -> "1"-based index
    groups = {"train": set(), "test": set()}
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            folder, file = row[0].split("/")
            cls, group = file[2:-4].rsplit("_", 2)[0], file[2:-4].rsplit("_", 2)[1]
            assert file == f"v_{folder}_{group}_{file[-7:-4]}.avi" and cls == folder
            assert (small_root / row[0]).is_file()
            if split == "train":
                assert row[1] == names[folder]
            groups[split].add(group)
    assert groups == {"train": {"g02"}, "test": {"g01"}}
    meta = json.loads((small_root / PARAMS_FILE).read_text())
    assert meta["class_names"] == class_names(2) and meta["num_train"] == 8 and meta["num_test"] == 8


def test_decoded_videos_match_the_rendered_frames(small_root):
    for spec in video_specs(SMALL)[:3]:
        decoded = _decode(small_root / spec.relpath)
        assert decoded.shape == (25, 32, 32, 3)
        assert np.abs(decoded.astype(np.int16) - render_video(SMALL, spec)).mean() < 4.0


def test_test_videos_are_exact_reverses(small_root):
    specs = [s for s in video_specs(SMALL) if s.test]
    pairs = 0
    for a in (s for s in specs if s.label % 2 == 0):
        b = next(s for s in specs if s.label == a.label + 1 and (s.group, s.clip) == (a.group, a.clip))
        np.testing.assert_array_equal(_decode(small_root / a.relpath)[::-1], _decode(small_root / b.relpath))
        pairs += 1
    assert pairs == 4


def test_training_videos_of_a_pair_are_independent_draws(small_root):
    train = [s for s in video_specs(SMALL) if not s.test]
    a = next(s for s in train if s.label == 0)
    b = next(s for s in train if s.label == 1 and (s.group, s.clip) == (a.group, a.clip))
    assert not np.array_equal(render_video(SMALL, a)[::-1], render_video(SMALL, b))


def test_test_clips_of_a_video_and_its_reverse_mirror_each_other():
    # With frames = 15 + 10 m (m odd), clip k of a video reversed is clip 9 - k of the reversed video.
    for n in (25, 45, 65):
        assert SynthParams(frames=n).mirrored_test_clips
        clips = sampling.test_clips(n, 16, 10)
        np.testing.assert_array_equal((n - 1 - clips[::-1])[:, ::-1], clips)
    for n in (19, 27, 35):
        assert not SynthParams(frames=n).mirrored_test_clips
        clips = sampling.test_clips(n, 16, 10)
        assert not np.array_equal((n - 1 - clips[::-1])[:, ::-1], clips)


def test_motion_is_visible_in_every_16_frame_window():
    params = SynthParams(num_pairs=len(PAIRS), videos_per_class=2, groups=2, test_groups=1)
    for spec in video_specs(params):
        frames = render_video(params, spec).astype(np.float32)
        for start in range(params.frames - 16 + 1):
            change = np.abs(frames[start + 15] - frames[start]).max(axis=-1)  # (H, W)
            assert (change > 40).sum() >= 6, (spec.relpath, start)  # several pixels change strongly


def test_backward_class_is_a_reversed_forward_draw():
    # Every video of a pair's second class, paired or not, is a forward video played backwards, so the two
    # classes' frames have the same distribution as unordered sets.
    for spec in (s for s in video_specs(SMALL) if s.label % 2 == 1):
        forward = dataclasses.replace(spec, reverse=False, label=spec.label - 1)
        np.testing.assert_array_equal(render_video(SMALL, spec), render_video(SMALL, forward)[::-1])


@pytest.mark.slow  # worker processes take seconds to start on a loaded 2-core machine
def test_deterministic_and_parallel_identical(tmp_path, small_root):
    other = generate_synthetic(tmp_path / "again", SMALL, workers=2)
    for spec in video_specs(SMALL):
        assert (other / spec.relpath).read_bytes() == (small_root / spec.relpath).read_bytes()
    reseeded = SynthParams(**{**SMALL.to_dict(), "seed": 1})
    spec = video_specs(reseeded)[0]
    assert not np.array_equal(render_video(reseeded, spec), render_video(SMALL, spec))


def test_cache_reuse_conflict_and_overwrite(tmp_path):
    params = SynthParams(num_pairs=1, videos_per_class=2, groups=2, test_groups=1, height=16, width=16)
    root = generate_synthetic(tmp_path / "d", params, workers=1)
    video = root / video_specs(params)[0].relpath
    stamp = video.stat().st_mtime_ns
    assert generate_synthetic(root, params, workers=1) == root
    assert video.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert read_params(root) == params

    bigger = SynthParams(**{**params.to_dict(), "videos_per_class": 4})
    with pytest.raises(DataError, match="other parameters"):
        generate_synthetic(root, bigger, workers=1)
    generate_synthetic(root, bigger, workers=1, overwrite=True)
    assert read_params(root) == bigger
    smaller = SynthParams(**{**params.to_dict(), "num_pairs": 1})
    generate_synthetic(root, smaller, workers=1, overwrite=True)
    assert sorted(p.name for p in (root / "MoveDown").iterdir()) == ["v_MoveDown_g01_c01.avi", "v_MoveDown_g02_c01.avi"]

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="other files"):
        generate_synthetic(tmp_path / "foreign", params, workers=1)


def test_params_validation():
    with pytest.raises(ValueError, match="multiple of groups"):
        SynthParams(videos_per_class=5, groups=2, test_groups=1)
    with pytest.raises(ValueError, match="wrap"):
        SynthParams(frames=16)
    with pytest.raises(ValueError, match="num_pairs"):
        SynthParams(num_pairs=len(PAIRS) + 1)
    with pytest.raises(ValueError, match="even"):
        SynthParams(height=33)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", str(out), "--pairs", "1", "--videos-per-class", "2", "--groups", "2", "--test-groups", "1",
            "--size", "16x24", "--workers", "1"]
    assert main(argv) == 0
    assert "2 classes, 2 train / 2 test videos" in capsys.readouterr().out
    assert read_params(out) == SynthParams(num_pairs=1, videos_per_class=2, groups=2, test_groups=1,
                                           height=16, width=24)
    assert main(["synth", str(tmp_path / "bad"), "--videos-per-class", "3", "--groups", "2", "--test-groups", "1"]) == 2
    assert "multiple of groups" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", str(out), "--size", "15x16"])


def test_readable_as_ucf101(small_root):
    sources = pytest.importorskip("c3dnet.data.sources")
    train = sources.load_source(small_root, "train", split=1)
    test = sources.load_source(small_root, "test", split=1)
    assert train.class_names == class_names(2)
    assert sorted((r.path.name, r.label) for r in test.records) == sorted(
        (s.relpath.split("/")[1], s.label) for s in video_specs(SMALL) if s.test)
    assert len(train.records) == 8
