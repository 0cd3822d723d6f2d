"""Annotation sources -> a list of `VideoRecord`s (video or frame folder, label) with class names.

`load_source(PATH)` detects what PATH is:
- a prepared frame dataset (`c3d prepare` output): `classes.txt` + `{train,test}_split{N}.txt`, lines
  `frame_dir total_frames label` relative to the folder;
- UCF-101 as downloaded: `<Class>/v_<Class>_gXX_cYY.avi` with `ucfTrainTestlist/` (inside, beside, or --splits):
  `classInd.txt` ("1 ApplyEyeMakeup"), `trainlist0N.txt` ("Class/v_..avi 1"), `testlist0N.txt` ("Class/v_..avi");
- HMDB-51 as downloaded: `<class>/*.avi` with `testTrainMulti_7030_splits/<class>_test_split{N}.txt`
  ("name.avi 1|2|0": train, test, unused);
- an annotation list file in mmaction2's formats: `frame_dir total_frames label` or `video_path label`, paths
  relative to the list's folder (or `root`); class names from a `classes.txt`/`classInd.txt` beside it;
- any folder with one subfolder per class (videos or frame folders), split deterministically per class by a hash
  of each item's name.
Bad lines raise `DataError` naming file:line; with `skip_bad` they are logged and kept in `Source.skipped`.

Example:
    >>> src = load_source("data/UCF-101", subset="test", split=1)       # doctest: +SKIP
    >>> len(src.records), src.class_names[:2], src.format               # doctest: +SKIP
    (3783, ['ApplyEyeMakeup', 'ApplyLipstick'], 'ucf101')
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from c3dnet.errors import DataError
from c3dnet.log import get_logger

log = get_logger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".3gp", ".ogv", ".ts",
     ".m2ts", ".mts", ".vob", ".h264", ".264", ".hevc", ".h265"}
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
UCF_SPLITS_DIR = "ucfTrainTestlist"
HMDB_SPLITS_DIR = "testTrainMulti_7030_splits"
DEFAULT_TEST_FRACTION = 0.3


@dataclass(frozen=True)
class VideoRecord:
    """One video: a video file or a folder of frames, its label (-1: unlabelled) and frame count if known."""

    path: Path
    label: int
    num_frames: int | None = None

    @property
    def is_frames(self) -> bool:
        """True when `path` is a folder of frame images rather than a video file."""
        return self.path.is_dir()

    @property
    def real_path(self) -> Path:
        """`path` made absolute with symlinks resolved (a path that cannot be resolved stays as it is: never an
        error, as `Path.resolve` is for a symlink loop)."""
        return Path(os.path.realpath(self.path))


@dataclass(frozen=True)
class SkippedItem:
    """An annotation line or video left out under `skip_bad`: where (file:line or path) and why."""

    where: str
    reason: str


@dataclass
class VideoList:
    """The videos that inputs name (`find_videos`), and what could not be listed under `skip_bad`."""

    records: list[VideoRecord]
    skipped: list[SkippedItem] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)  # the inputs, and the paths their list files name


@dataclass
class Source:
    """A dataset subset: records, class names (label i is `class_names[i]`), its root and detected format."""

    records: list[VideoRecord]
    class_names: list[str]
    root: Path
    format: str
    skipped: list[SkippedItem] = field(default_factory=list)


class _Problems:
    """Raises at the first bad item (its message ending in `hint`), or (skip_bad) collects every one."""

    def __init__(self, skip_bad: bool, hint: str = "") -> None:
        self.skip_bad, self.hint = skip_bad, hint
        self.items: list[SkippedItem] = []

    def bad(self, where: str, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{where}: {reason}{self.hint}")
        self.items.append(SkippedItem(where, reason))


# --------------------------------------------------------------------------------------------------- entry points


def load_source(
    data: str | Path,
    subset: Literal["train", "test"] = "train",
    split: int = 1,
    splits_dir: str | Path | None = None,
    skip_bad: bool = False,
    *,
    root: str | Path | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Source:
    """Read the `subset` of official split `split` from whatever `data` is (see the module docstring).

    Args:
        data: dataset folder or annotation list file.
        subset: "train" or "test".
        split: official split number (1-3 for UCF-101 and HMDB-51); for class folders it salts the hash split.
        splits_dir: folder with the official split files, when they are not inside or beside `data`.
        skip_bad: log and skip bad annotation lines and missing videos instead of raising.
        root: for annotation list files, the folder their paths are relative to (default: the list's folder).
        test_fraction: for class folders, the share of each class's items that go to the test subset.

    Raises:
        DataError: unknown layout, missing split files, malformed lines, unknown classes, missing videos.
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    data = Path(data)
    problems = _Problems(skip_bad)
    if not data.exists():
        raise DataError(f"{data}: no such file or folder; --data must name a dataset folder or an annotation list")
    if data.is_file():
        src = _load_list_file(data, Path(root) if root is not None else data.parent, problems)
    else:
        src = _load_folder(data, subset, split, splits_dir, problems, test_fraction)
    src.skipped = problems.items
    if src.format == "folders":
        # Say so: a UCF-101 or HMDB-51 folder whose split files were not found lands here, and a hash split is
        # not the official one.
        log.info("%s: no split files found; read as class folders with a deterministic %d%% test split (pass "
                 "--splits DIR for an official split)", data, round(100 * test_fraction))
    if src.skipped:
        log.warning("%s: skipped %d bad item(s), first: %s: %s", data, len(src.skipped),
                    src.skipped[0].where, src.skipped[0].reason)
    if not src.records:
        raise DataError(f"{data}: the {subset} subset of split {split} has no usable videos "
                        f"({len(src.skipped)} skipped); check the split files and the dataset folder")
    return src


def available_splits(data: str | Path, splits_dir: str | Path | None = None) -> list[int]:
    """The official split numbers found for a dataset folder ([1] for layouts without official splits)."""
    data = Path(data)
    if data.is_file():
        return [1]
    if (data / "classes.txt").is_file():
        return sorted(int(m.group(1)) for p in data.glob("train_split*.txt")
                      if (m := re.fullmatch(r"train_split(\d+)\.txt", p.name)))
    ucf = _find_splits(data, splits_dir, UCF_SPLITS_DIR, "classInd.txt")
    if ucf is not None:
        return sorted(int(m.group(1)) for p in ucf.glob("trainlist*.txt")
                      if (m := re.fullmatch(r"trainlist0*(\d+)\.txt", p.name)))
    hmdb = _find_splits(data, splits_dir, HMDB_SPLITS_DIR, "*_test_split*.txt")
    if hmdb is not None:
        return sorted({int(m.group(1)) for p in hmdb.glob("*_test_split*.txt")
                       if (m := re.fullmatch(r".+_test_split(\d+)\.txt", p.name))})
    return [1]


def find_videos(paths: list[str | Path], skip_bad: bool = False) -> VideoList:
    """Unlabelled records (label -1) for videos named by files, folders (searched recursively) or list files.

    A folder that itself holds frame images is one frame-folder record. A `.txt` file lists one video per line
    (first field; later fields ignored), relative to the list's folder. Symlinked folders are searched too. A
    symlink loop (a link to itself, or to a folder it is inside), a broken link named like a video, and a folder
    or video file that cannot be read are each a `DataError` naming the path, or with `skip_bad` a `SkippedItem`
    in `VideoList.skipped` (logged). A video reached twice (named twice, or through two links) is listed once.
    An input that does not exist at all is always an error.
    """
    problems = _Problems(skip_bad, "; or pass --skip-bad to leave it out")
    records: list[VideoRecord] = []
    searched = list(map(Path, paths))
    for p in map(Path, paths):
        if not (p.exists() or p.is_symlink()):
            raise DataError(f"{p}: no such video, folder or list file")
        if _stat(p, problems) is None:
            continue
        if p.is_dir():
            records.extend(_videos_under(p, problems))
        elif p.suffix.lower() == ".txt":
            for lineno, line in text_lines(p):
                target = _resolve(p.parent, line.split()[0])
                if not (target.exists() or target.is_symlink()):
                    raise DataError(f"{p}:{lineno}: {target} does not exist; fix the path in the list")
                searched.append(target)
                if _stat(target, problems, f" (line {lineno} of {p})") is None:
                    continue
                records.extend(_videos_under(target, problems) if target.is_dir() else _video_file(target, problems))
        else:
            records.extend(_video_file(p, problems))
    records = _once(records)
    if problems.items:
        log.warning("skipped %d input(s) that cannot be listed, first: %s: %s", len(problems.items),
                    problems.items[0].where, problems.items[0].reason)
    if not records:
        raise DataError(f"no videos found in {[str(p) for p in paths]}; give video files, folders or list files")
    return VideoList(records, problems.items, searched)


def load_video_list(paths: list[str | Path], skip_bad: bool = False) -> list[VideoRecord]:
    """The records of `find_videos(paths, skip_bad)` (what could not be listed is logged, and dropped)."""
    return find_videos(paths, skip_bad).records


# --------------------------------------------------------------------------------------------------- helpers


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-empty, non-comment lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); "
                        "give an annotation list in text form") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    return [(i, s) for i, raw in enumerate(text.splitlines(), 1) if (s := raw.strip()) and not s.startswith("#")]


def _resolve(base: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else base / p


def _is_frame_folder(path: Path) -> bool:
    try:
        return any(Path(n).suffix.lower() in IMAGE_EXTENSIONS for n in os.listdir(path))
    except OSError:
        return False


def _unusable(path: Path, e: OSError) -> str:
    """Why `path` cannot be listed, and what to do."""
    if e.errno == errno.ELOOP:
        return f"a symlink loop ({e.strerror}): the link leads back to itself; fix or remove the link"
    if e.errno == errno.ENOENT and path.is_symlink():
        return f"a broken symlink (to {os.readlink(path)!r}, which does not exist); fix or remove the link"
    return f"cannot be read ({e.strerror or e}); fix its permissions"


def _stat(path: Path, problems: _Problems, listed: str = "") -> os.stat_result | None:
    """`path`'s status (symlinks followed), or None once its problem is reported (`listed`: where a list names
    it)."""
    try:
        return path.stat()
    except OSError as e:
        problems.bad(str(path), f"{_unusable(path, e)}{listed}")
        return None


def _video_file(path: Path, problems: _Problems) -> list[VideoRecord]:
    """[the record of video file `path`], or [] once its problem is reported (it cannot be read)."""
    if not os.access(path, os.R_OK):
        problems.bad(str(path), _unusable(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES))))
        return []
    return [VideoRecord(path, -1)]


def _videos_under(folder: Path, problems: _Problems) -> list[VideoRecord]:
    """The videos under `folder`, in sorted order (each folder's files before its subfolders); a folder of frame
    images is one record. Symlinked folders are followed, except back into a folder being searched (a loop)."""
    found: list[VideoRecord] = []

    def visit(d: Path, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            st = d.stat()
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.bad(str(d), _unusable(d, e))
            return
        here = (st.st_dev, st.st_ino)
        if here in ancestors:
            problems.bad(str(d), f"a symlink loop: this is {os.path.realpath(d)}, a folder it is inside; remove the "
                                 "link")
            return
        if any(Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in entries):
            found.append(VideoRecord(d, -1))
            return
        subfolders = []
        for entry in entries:
            path = d / entry.name
            video = Path(entry.name).suffix.lower() in VIDEO_EXTENSIONS
            try:
                if entry.is_symlink():
                    os.stat(path)  # where a loop or a broken link shows
                is_dir = entry.is_dir()  # (following a link)
            except OSError as e:
                if e.errno == errno.ELOOP or video:
                    problems.bad(str(path), _unusable(path, e))
                continue
            if is_dir:
                subfolders.append(path)
            elif video:
                found.extend(_video_file(path, problems))
        for sub in subfolders:
            visit(sub, ancestors | {here})

    visit(folder, frozenset())
    return found


def _once(records: list[VideoRecord]) -> list[VideoRecord]:
    """`records` without repeats of one video (the same file reached twice), the first kept."""
    seen: dict[Path, Path] = {}
    kept = []
    for r in records:
        real = r.real_path
        if real in seen:
            log.info("%s: the same video as %s; listed once", r.path, seen[real])
            continue
        seen[real] = r.path
        kept.append(r)
    return kept


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _read_class_names(path: Path) -> list[str]:
    """`classes.txt` (one name per line) or `classInd.txt` ("1 Name" per line, numbered from 1)."""
    lines = text_lines(path)
    if not lines:
        raise DataError(f"{path}: empty class list; it needs one class per line")
    numbered = all(len(s.split()) == 2 and _parse_int(s.split()[0]) is not None for _, s in lines)
    if not numbered:
        for lineno, s in lines:
            if len(s.split()) != 1:
                raise DataError(f"{path}:{lineno}: expected one class name per line (or 'N Name'), got {s!r}")
        names = [s for _, s in lines]
    else:
        first = int(lines[0][1].split()[0])
        names = []
        for k, (lineno, s) in enumerate(lines):
            num, name = s.split()
            if int(num) != first + k or first not in (0, 1):
                raise DataError(f"{path}:{lineno}: class numbers must run 1, 2, 3, ... (or from 0) without gaps; "
                                f"expected {first + k}, got {num}")
            names.append(name)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: class {dup!r} is listed twice; each class must appear once")
    return names


def _find_splits(data: Path, splits_dir: str | Path | None, name: str, marker: str) -> Path | None:
    """The official split folder: `splits_dir`, else `name` inside or beside `data`, `data` itself, or any
    folder inside or beside `data` holding `marker` (a renamed split folder)."""
    if splits_dir is not None:
        c = Path(splits_dir)
        return c if c.is_dir() and any(c.glob(marker)) else None
    for c in (data / name, data.parent / name, data):
        if c.is_dir() and any(c.glob(marker)):
            return c
    for folder in (data, data.parent):
        try:
            subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and p != data)
        except OSError:
            continue
        for c in subdirs:
            if any(c.glob(marker)):
                return c
    return None


def _child(folder: Path, name: str) -> Path:
    """`folder/name`, matching `name` case-insensitively when it does not exist as spelled."""
    p = folder / name
    if p.exists():
        return p
    try:
        lower = {n.lower(): n for n in os.listdir(folder)}
    except OSError:
        return p
    return folder / lower.get(name.lower(), name)


def _load_folder(data: Path, subset: str, split: int, splits_dir, problems: _Problems, test_fraction: float) -> Source:
    if (data / "classes.txt").is_file():
        return _load_prepared(data, subset, split, problems)
    ucf = _find_splits(data, splits_dir, UCF_SPLITS_DIR, "classInd.txt")
    if ucf is not None:
        return _load_ucf(data, ucf, subset, split, problems)
    hmdb = _find_splits(data, splits_dir, HMDB_SPLITS_DIR, "*_test_split*.txt")
    if hmdb is not None:
        return _load_hmdb(data, hmdb, subset, split, problems)
    if splits_dir is not None:
        raise DataError(f"{splits_dir}: holds neither UCF-101 split files (classInd.txt, trainlist01.txt, ...) nor "
                        "HMDB-51 ones (<class>_test_split1.txt, ...); point --splits at the official split folder")
    return _load_class_folders(data, subset, split, problems, test_fraction)


def _load_prepared(data: Path, subset: str, split: int, problems: _Problems) -> Source:
    classes = _read_class_names(data / "classes.txt")
    list_file = data / f"{subset}_split{split}.txt"
    if not list_file.is_file():
        have = sorted(p.name for p in data.glob("*_split*.txt"))
        raise DataError(f"{list_file}: not found (the prepared dataset has {have}); pick another --split or rerun "
                        "`c3d prepare` for this split")
    records = _parse_list(list_file, data, classes, problems)
    return Source(records, classes, data, "frames")


def _load_list_file(path: Path, root: Path, problems: _Problems) -> Source:
    classes = None
    for name in ("classes.txt", "classInd.txt"):
        if (path.parent / name).is_file() and path.name != name:
            classes = _read_class_names(path.parent / name)
            break
    records = _parse_list(path, root, classes, problems)
    if classes is None:
        top = max((r.label for r in records), default=-1)
        classes = [str(i) for i in range(top + 1)]
    fmt = "list_frames" if records and records[0].num_frames is not None else "list_videos"
    return Source(records, classes, root, fmt)


def _parse_list(path: Path, root: Path, classes: list[str] | None, problems: _Problems) -> list[VideoRecord]:
    """mmaction2-style lines: `frame_dir total_frames label` or `video_path label` (one form per file)."""
    records = []
    form = None
    for lineno, line in text_lines(path):
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) not in (2, 3):
            problems.bad(where, f"expected 'frame_dir total_frames label' or 'video_path label', got {line!r}; "
                                "fix or remove the line")
            continue
        if form is None:
            form = len(parts)
        if len(parts) != form:
            problems.bad(where, f"this line has {len(parts)} fields but the file's first line has {form}; one list "
                                "must use one format")
            continue
        label = _parse_int(parts[-1])
        num = _parse_int(parts[1]) if form == 3 else None
        if label is None or (form == 3 and num is None):
            problems.bad(where, f"non-numeric frame count or label in {line!r}; labels are 0-based integers")
            continue
        if label < 0 or (classes is not None and label >= len(classes)):
            upper = f" (the class list has {len(classes)} classes)" if classes is not None else ""
            problems.bad(where, f"label {label} is out of range{upper}; labels are 0-based class indices")
            continue
        if num is not None and num < 1:
            problems.bad(where, f"frame count {num} must be >= 1; re-extract this video or remove the line")
            continue
        target = _resolve(root, parts[0])
        if not target.exists():
            problems.bad(where, f"{target} does not exist; fix the path (relative to {root}) or the dataset root")
            continue
        records.append(VideoRecord(target, label, num))
    return records


def _find_video(folder: Path, name: str) -> Path | None:
    """`folder/name`, or a case-insensitive match (UCF-101 spells HandStandPushups two ways)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        return None
    p = folder / name
    if p.is_file():
        return p
    try:
        lower = {n.lower(): n for n in os.listdir(folder)}
    except OSError:
        return None
    match = folder / lower[name.lower()] if name.lower() in lower else None
    return match if match is not None and match.is_file() else None


def _load_ucf(data: Path, splits: Path, subset: str, split: int, problems: _Problems) -> Source:
    classes = _read_class_names(splits / "classInd.txt")
    index = {c.lower(): i for i, c in enumerate(classes)}
    list_file = next((p for p in (splits / f"{subset}list{split:02d}.txt", splits / f"{subset}list{split}.txt")
                      if p.is_file()), None)
    if list_file is None:
        raise DataError(f"{splits}: no {subset}list{split:02d}.txt; UCF-101 has splits 1-3: pick another --split "
                        "or restore the official split files")
    records = []
    for lineno, line in text_lines(list_file):
        where = f"{list_file}:{lineno}"
        parts = line.split()
        rel = parts[0].replace("\\", "/")
        if len(parts) > 2 or rel.count("/") != 1 or rel.endswith("/"):
            problems.bad(where, f"expected 'Class/v_Class_gXX_cYY.avi [label]', got {line!r}; fix or remove the line")
            continue
        folder_class = rel.split("/")[0]
        label = index.get(folder_class.lower())
        if label is None:
            problems.bad(where, f"class folder {folder_class!r} is not in {splits / 'classInd.txt'}")
            continue
        if len(parts) == 2:
            given = _parse_int(parts[1])
            if given is None or not 1 <= given <= len(classes):
                problems.bad(where, f"label {parts[1]!r} must be a class number 1..{len(classes)} from classInd.txt")
                continue
            if given - 1 != label:
                problems.bad(where, f"label {given} ({classes[given - 1]}) disagrees with the folder "
                                    f"{folder_class!r} (class {label + 1}); fix the list")
                continue
        video = _find_video(_child(data, folder_class), rel.rsplit("/", 1)[1])
        if video is None:
            problems.bad(where, f"{data / rel} does not exist; check --data (the UCF-101 folder) and the download")
            continue
        records.append(VideoRecord(video, label))
    return Source(records, classes, data, "ucf101")


def _load_hmdb(data: Path, splits: Path, subset: str, split: int, problems: _Problems) -> Source:
    suffix = f"_test_split{split}.txt"
    files = sorted(splits.glob(f"*{suffix}"))
    if not files:
        raise DataError(f"{splits}: no *{suffix} files; HMDB-51 has splits 1-3: pick another --split")
    classes = [f.name[: -len(suffix)] for f in files]
    wanted = 1 if subset == "train" else 2
    records = []
    for label, (cls, list_file) in enumerate(zip(classes, files, strict=True)):
        for lineno, line in text_lines(list_file):
            where = f"{list_file}:{lineno}"
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                problems.bad(where, f"expected 'name.avi 1|2|0' (train, test, unused), got {line!r}")
                continue
            if int(parts[1]) != wanted:
                continue
            video = _find_video(_child(data, cls), parts[0])
            if video is None:
                problems.bad(where, f"{data / cls / parts[0]} does not exist; check --data (the HMDB-51 folder)")
                continue
            records.append(VideoRecord(video, label))
    return Source(records, classes, data, "hmdb51")


def _hash_rank(split: int, name: str) -> str:
    return hashlib.sha1(f"{split}:{name}".encode()).hexdigest()


def _load_class_folders(data: Path, subset: str, split: int, problems: _Problems, test_fraction: float) -> Source:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes = sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{data}: not a dataset: expected a UCF-101 or HMDB-51 folder (with its split files inside, "
                        "beside it, or given by --splits), a `c3d prepare` output (classes.txt), an annotation "
                        "list file, or a folder with one subfolder of videos per class")
    records = []
    for label, cls in enumerate(classes):
        items = []
        for entry in sorted((data / cls).iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and _is_frame_folder(entry):
                items.append(entry)
            elif entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
                items.append(entry)
        if not items:
            problems.bad(str(data / cls), "class folder holds no videos or frame folders; add some or remove it")
            continue
        # Stratified and stable: each class's items ordered by a hash of their name, the first share is test.
        ranked = sorted(items, key=lambda p: _hash_rank(split, p.name))
        n_test = min(len(items) - 1, max(1, round(test_fraction * len(items)))) if len(items) > 1 else 0
        chosen = set(ranked[:n_test]) if subset == "test" else set(ranked[n_test:])
        records.extend(VideoRecord(p, label) for p in items if p in chosen)
    return Source(records, classes, data, "folders")
