"""Sources: every annotation format parsed from generated files, detection, and bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from c3dnet.data.sources import VideoRecord, available_splits, load_source, load_video_list
from c3dnet.errors import DataError

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_ucf(root: Path, splits_inside: bool = True) -> tuple[Path, Path]:
    """A UCF-101 layout: 3 classes x 2 groups x 2 clips; group 1 is test, group 2 train (split 1)."""
    data = root / "UCF-101"
    splits = (data if splits_inside else root) / "ucfTrainTestlist"
    splits.mkdir(parents=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    train, test = [], []
    for ci, cls in enumerate(UCF_CLASSES):
        file_cls = "HandStandPushups" if cls == "HandstandPushups" else cls  # UCF-101's real spelling quirk
        for g in (1, 2):
            for c in (1, 2):
                name = f"v_{file_cls}_g{g:02d}_c{c:02d}.avi"
                _touch(data / cls / name)
                (test if g == 1 else train).append((f"{cls}/{name}", ci + 1))
    (splits / "trainlist01.txt").write_text("".join(f"{p} {lab}\r\n" for p, lab in train))
    (splits / "testlist01.txt").write_text("".join(f"{p}\n" for p, _ in test))
    return data, splits


def test_ucf101(tmp_path):
    data, _ = make_ucf(tmp_path)
    train = load_source(data, "train", 1)
    test = load_source(data, "test", 1)
    assert train.format == test.format == "ucf101"
    assert train.class_names == UCF_CLASSES and train.root == data
    assert len(train.records) == len(test.records) == 6
    for r in train.records + test.records:
        assert UCF_CLASSES[r.label] == r.path.parent.name and r.path.is_file() and r.num_frames is None
    assert [r.label for r in test.records] == [0, 0, 1, 1, 2, 2]
    assert all("_g01_" in r.path.name for r in test.records)
    assert available_splits(data) == [1]


def test_ucf101_splits_beside_and_given(tmp_path):
    data, splits = make_ucf(tmp_path, splits_inside=False)
    assert len(load_source(data, "test").records) == 6  # found beside the dataset folder
    splits.rename(tmp_path / "lists")
    assert load_source(data).format == "ucf101"  # a renamed split folder beside the data is still found
    (tmp_path / "far").mkdir()
    (tmp_path / "lists").rename(tmp_path / "far" / "lists")
    assert load_source(data).format == "folders"  # without split files, a folder of class folders
    src = load_source(data, "train", splits_dir=tmp_path / "far" / "lists")
    assert src.format == "ucf101" and len(src.records) == 6
    with pytest.raises(DataError, match=r"testlist02\.txt; UCF-101 has splits 1-3"):
        load_source(data, "test", split=2, splits_dir=tmp_path / "far" / "lists")
    # class folder spelled with another case in the lists (as UCF-101's HandStandPushups)
    lst = tmp_path / "far" / "lists" / "testlist01.txt"
    lst.write_text(lst.read_text().replace("HandstandPushups/", "HandStandPushups/"))
    test = load_source(data, "test", splits_dir=tmp_path / "far" / "lists")
    assert [r.path.parent.name for r in test.records][-2:] == ["HandstandPushups"] * 2
    assert [r.label for r in test.records][-2:] == [2, 2]


def test_ucf101_bad_lines(tmp_path):
    data, splits = make_ucf(tmp_path)
    lst = splits / "trainlist01.txt"
    good = lst.read_text()
    bad_label = "Basketball/v_Basketball_g02_c01.avi 1\n"  # label says ApplyEyeMakeup: a wrong label
    lst.write_text(good + bad_label)
    with pytest.raises(DataError, match=r"trainlist01\.txt:7: label 1 \(ApplyEyeMakeup\) disagrees"):
        load_source(data, "train")
    lst.write_text(good + "Nope/v_Nope_g01_c01.avi 2\n" + "Basketball/v_missing.avi 2\n" + "Basketball/x.avi 99\n")
    with pytest.raises(DataError, match=r"trainlist01\.txt:7: class folder 'Nope'"):
        load_source(data, "train")
    src = load_source(data, "train", skip_bad=True)
    assert len(src.records) == 6
    assert [s.where.rsplit(":", 1)[1] for s in src.skipped] == ["7", "8", "9"]
    assert "does not exist" in src.skipped[1].reason and "1..3" in src.skipped[2].reason


def test_class_index_errors(tmp_path):
    data, splits = make_ucf(tmp_path)
    (splits / "classInd.txt").write_text("1 A\n3 B\n")
    with pytest.raises(DataError, match=r"classInd\.txt:2: class numbers must run"):
        load_source(data)
    (splits / "classInd.txt").write_text("1 A\n2 A\n")
    with pytest.raises(DataError, match=r"class 'A' is listed twice"):
        load_source(data)


def make_hmdb(root: Path) -> Path:
    data = root / "hmdb51"
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for cls in ("brush_hair", "cartwheel"):
        lines = []
        for k, tag in enumerate([1, 1, 2, 0, 2]):
            name = f"{cls}_clip{k}.avi"
            _touch(data / cls / name)
            lines.append(f"{name} {tag} \n")
        for split in (1, 2):
            (splits / f"{cls}_test_split{split}.txt").write_text("".join(lines))
    return data


def test_hmdb51(tmp_path):
    data = make_hmdb(tmp_path)
    train = load_source(data, "train", 1)
    test = load_source(data, "test", 2)
    assert train.format == "hmdb51" and train.class_names == ["brush_hair", "cartwheel"]
    assert [(r.path.name, r.label) for r in train.records] == [
        ("brush_hair_clip0.avi", 0), ("brush_hair_clip1.avi", 0),
        ("cartwheel_clip0.avi", 1), ("cartwheel_clip1.avi", 1)]
    assert [r.path.name for r in test.records] == ["brush_hair_clip2.avi", "brush_hair_clip4.avi",
                                                    "cartwheel_clip2.avi", "cartwheel_clip4.avi"]
    assert available_splits(data) == [1, 2]
    split_file = tmp_path / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
    split_file.write_text(split_file.read_text() + "cartwheel_clip0.avi 7\n")
    with pytest.raises(DataError, match=r"cartwheel_test_split1\.txt:6: expected 'name.avi 1\|2\|0'"):
        load_source(data, "train", 1)


def make_prepared(root: Path) -> Path:
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("Run\nJump\n")
    for name in ("Run/a", "Jump/b", "Jump/c"):
        _touch(root / "frames" / name / "img_00001.jpg")
    (root / "train_split1.txt").write_text("frames/Run/a 20 0\nframes/Jump/b 30 1\n")
    (root / "test_split1.txt").write_text("frames/Jump/c 12 1\n")
    return root


def test_prepared_frames(tmp_path):
    root = make_prepared(tmp_path / "prep")
    train = load_source(root, "train")
    assert train.format == "frames" and train.class_names == ["Run", "Jump"]
    assert train.records == [VideoRecord(root / "frames/Run/a", 0, 20), VideoRecord(root / "frames/Jump/b", 1, 30)]
    assert train.records[0].is_frames
    assert load_source(root, "test").records == [VideoRecord(root / "frames/Jump/c", 1, 12)]
    with pytest.raises(DataError, match=r"train_split2\.txt: not found .*train_split1\.txt"):
        load_source(root, "train", split=2)
    (root / "test_split1.txt").write_text("frames/Jump/c 12 2\n")
    with pytest.raises(DataError, match=r"test_split1\.txt:1: label 2 is out of range \(the class list has 2"):
        load_source(root, "test")


def test_mmaction_lists(tmp_path):
    root = make_prepared(tmp_path / "prep")
    frames_list = tmp_path / "ann" / "frames.txt"
    _touch(frames_list, b"")
    frames_list.write_text(f"{root}/frames/Run/a 20 0\n\n# comment\n{root}/frames/Jump/b 30 3\n")
    src = load_source(frames_list)
    assert src.format == "list_frames" and src.class_names == ["0", "1", "2", "3"]
    assert [(r.label, r.num_frames) for r in src.records] == [(0, 20), (3, 30)]
    videos = tmp_path / "vids"
    _touch(videos / "x.mp4")
    _touch(videos / "sub" / "y.avi")
    (videos / "list.txt").write_text("x.mp4 1\nsub/y.avi 0\n")
    (videos / "classes.txt").write_text("a\nb\n")
    src = load_source(videos / "list.txt")
    assert src.format == "list_videos" and src.class_names == ["a", "b"]
    assert src.records == [VideoRecord(videos / "x.mp4", 1), VideoRecord(videos / "sub/y.avi", 0)]
    other = tmp_path / "rel.txt"
    other.write_text("x.mp4 0\n")
    assert load_source(other, root=videos).records == [VideoRecord(videos / "x.mp4", 0)]
    with pytest.raises(DataError, match=r"rel\.txt:1: .*x\.mp4 does not exist"):
        load_source(other)


@pytest.mark.parametrize(
    "line, message",
    [("a b c d", "expected 'frame_dir total_frames label'"), ("x.mp4 one", "non-numeric"),
     ("x.mp4 -1", "label -1 is out of range"), ("x.mp4 2", r"label 2 is out of range \(the class list has 2")],
)
def test_list_bad_lines(tmp_path, line, message):
    _touch(tmp_path / "x.mp4")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "list.txt").write_text(f"x.mp4 0\n{line}\n")
    with pytest.raises(DataError, match=rf"list\.txt:2: {message}"):
        load_source(tmp_path / "list.txt")
    src = load_source(tmp_path / "list.txt", skip_bad=True)
    assert len(src.records) == 1 and len(src.skipped) == 1 and src.skipped[0].where.endswith("list.txt:2")


def test_class_folders_split(tmp_path):
    data = tmp_path / "mine"
    for cls, n in [("walk", 10), ("sit", 7), ("wave", 1)]:
        for k in range(n):
            _touch(data / cls / f"{cls}{k:02d}.mp4")
    _touch(data / "sit" / "notes.txt")
    train, test = load_source(data, "train"), load_source(data, "test")
    assert train.format == "folders" and train.class_names == ["sit", "walk", "wave"]
    tr, te = {r.path for r in train.records}, {r.path for r in test.records}
    assert not tr & te and len(tr | te) == 18
    counts = {c: sum(r.label == i for r in test.records) for i, c in enumerate(train.class_names)}
    assert counts == {"sit": 2, "walk": 3, "wave": 0}  # round(0.3 * n) per class, the lone video trains
    assert load_source(data, "test").records == test.records  # deterministic
    assert {r.path for r in load_source(data, "test", split=2).records} != te  # the split number re-draws
    assert len(load_source(data, "test", test_fraction=0.5).records) == 5 + 4


def test_detection_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_source(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected a UCF-101 or HMDB-51 folder"):
        load_source(tmp_path / "empty")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match=r"bin\.txt: not a UTF-8 text file"):
        load_source(tmp_path / "bin.txt")


def test_load_video_list(tmp_path):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "d" / "b.avi")
    _touch(tmp_path / "d" / "e" / "c.mkv")
    _touch(tmp_path / "d" / "readme.md")
    _touch(tmp_path / "frames" / "img_00001.jpg")
    (tmp_path / "l.txt").write_text("a.mp4\nframes extra fields\n")
    recs = load_video_list([tmp_path / "a.mp4", tmp_path / "d", tmp_path / "l.txt"])
    # a.mp4 is named twice (directly and by the list): listed once, so it gets one key and is extracted once
    assert [r.path.relative_to(tmp_path).as_posix() for r in recs] == ["a.mp4", "d/b.avi", "d/e/c.mkv", "frames"]
    assert all(r.label == -1 for r in recs)
    with pytest.raises(DataError, match="no such video"):
        load_video_list([tmp_path / "zzz.mp4"])
