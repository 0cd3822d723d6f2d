"""The public C3D weight files, by name: where each is published, how to verify it, what it is.

Nobody working on c3dnet can reach these hosts, so every entry is written from its publisher's documentation
(the model zoo page named in `reported_in`); loading a downloaded file reports what it actually found (layout,
classes, dropped metadata). `c3d weights list` prints this table, `c3dnet.load_model(NAME)` and `--weights NAME`
download an entry into the cache (`c3dnet.weights.download`).

Example:
    >>> from c3dnet.weights.registry import find
    >>> find("c3d-ucf101-mmaction2").sha256_prefix
    '31723200'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from c3dnet.errors import WeightsError
from c3dnet.preprocess import CAFFE_PREPROCESS, SEED_PREPROCESS, Preprocess

UCF101_CLASSES: tuple[str, ...] = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching", "BaseballPitch",
    "Basketball", "BasketballDunk", "BenchPress", "Biking", "Billiards", "BlowDryHair", "BlowingCandles",
    "BodyWeightSquats", "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "BreastStroke", "BrushingTeeth",
    "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot", "CuttingInKitchen", "Diving", "Drumming",
    "Fencing", "FieldHockeyPenalty", "FloorGymnastics", "FrisbeeCatch", "FrontCrawl", "GolfSwing", "Haircut",
    "Hammering", "HammerThrow", "HandstandPushups", "HandstandWalking", "HeadMassage", "HighJump", "HorseRace",
    "HorseRiding", "HulaHoop", "IceDancing", "JavelinThrow", "JugglingBalls", "JumpingJack", "JumpRope", "Kayaking",
    "Knitting", "LongJump", "Lunges", "MilitaryParade", "Mixing", "MoppingFloor", "Nunchucks", "ParallelBars",
    "PizzaTossing", "PlayingCello", "PlayingDaf", "PlayingDhol", "PlayingFlute", "PlayingGuitar", "PlayingPiano",
    "PlayingSitar", "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps", "Punch", "PushUps",
    "Rafting", "RockClimbingIndoor", "RopeClimbing", "Rowing", "SalsaSpin", "ShavingBeard", "Shotput",
    "SkateBoarding", "Skiing", "Skijet", "SkyDiving", "SoccerJuggling", "SoccerPenalty", "StillRings",
    "SumoWrestling", "Surfing", "Swing", "TableTennisShot", "TaiChi", "TennisSwing", "ThrowDiscus",
    "TrampolineJumping", "Typing", "UnevenBars", "VolleyballSpiking", "WalkingWithDog", "WallPushups",
    "WritingOnBoard", "YoYo",
)
"""UCF-101's 101 classes in the order of its `classInd.txt` (label i is line i + 1)."""

_MMACTION2_ZOO_1X = "https://github.com/open-mmlab/mmaction2/tree/main/configs/recognition/c3d"
_MMACTION2_ZOO_0X = "https://github.com/open-mmlab/mmaction2/tree/0.x/configs/recognition/c3d"
_PADDLE_PAN = "https://pan.baidu.com/s/1s836WYAixWBMnCckXblHbA (extraction code b6wm)"


@dataclass(frozen=True)
class Pretrained:
    """One published weight file.

    Attributes:
        name: what `--weights` and `load_model` accept.
        url: where the publisher serves it; None when there is no direct link (see `manual`).
        file_name: the file's name in the cache (and the name a mirror serves it under).
        format: its key layout ("mmaction2", "caffe", "paddle").
        sha256_prefix: the first hex digits of its SHA-256 as the publisher gave them (mmaction2 puts 8 in the
            file name); None when nothing was published (the first download's digest is recorded and trusted).
        architecture: what the file holds, in words.
        num_classes: classifier size (None: backbone only).
        class_names: its classes in classifier order, when known.
        preprocess: the preprocessing it was trained with.
        accuracy: the reported accuracy, or "" when none was reported for this file.
        reported_in: where that accuracy (and the file) is documented.
        manual: the steps to get a file that has no direct URL.
    """

    name: str
    url: str | None
    file_name: str
    format: str
    sha256_prefix: str | None
    architecture: str
    num_classes: int | None
    class_names: tuple[str, ...] | None
    preprocess: Preprocess
    accuracy: str
    reported_in: str
    manual: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "file_name": self.file_name, "format": self.format,
                "sha256_prefix": self.sha256_prefix, "architecture": self.architecture,
                "num_classes": self.num_classes, "class_names": list(self.class_names) if self.class_names else None,
                "preprocess": self.preprocess.to_dict(), "accuracy": self.accuracy, "reported_in": self.reported_in,
                "manual": self.manual}


REGISTRY: tuple[Pretrained, ...] = (
    Pretrained(
        name="c3d-sports1m-mmaction2",
        url="https://download.openmmlab.com/mmaction/recognition/c3d/c3d_sports1m_pretrain_20201016-dcc47ddc.pth",
        file_name="c3d_sports1m_pretrain_20201016-dcc47ddc.pth", format="mmaction2", sha256_prefix="dcc47ddc",
        architecture="C3D backbone (conv1a-fc7), Sports-1M pretrained; no classifier", num_classes=None,
        class_names=None, preprocess=SEED_PREPROCESS, accuracy="",
        reported_in=_MMACTION2_ZOO_0X + " (the pretrained backbone of its UCF-101 recipe)",
    ),
    Pretrained(
        name="c3d-ucf101-mmaction2",
        url="https://download.openmmlab.com/mmaction/v1.0/recognition/c3d/"
            "c3d_sports1m-pretrained_8xb30-16x1x1-45e_ucf101-rgb/"
            "c3d_sports1m-pretrained_8xb30-16x1x1-45e_ucf101-rgb_20220811-31723200.pth",
        file_name="c3d_sports1m-pretrained_8xb30-16x1x1-45e_ucf101-rgb_20220811-31723200.pth", format="mmaction2",
        sha256_prefix="31723200", architecture="C3D, UCF-101 split 1 fine-tuned from Sports-1M (mmaction2 1.x)",
        num_classes=101, class_names=UCF101_CLASSES, preprocess=SEED_PREPROCESS,
        accuracy="83.08 top-1 / 95.93 top-5 (UCF-101 split 1, 10 clips x centre crop)", reported_in=_MMACTION2_ZOO_1X,
    ),
    Pretrained(
        name="c3d-ucf101-mmaction2-0x",
        url="https://download.openmmlab.com/mmaction/recognition/c3d/c3d_sports1m_16x1x1_45e_ucf101_rgb/"
            "c3d_sports1m_16x1x1_45e_ucf101_rgb_20201021-26655025.pth",
        file_name="c3d_sports1m_16x1x1_45e_ucf101_rgb_20201021-26655025.pth", format="mmaction2",
        sha256_prefix="26655025", architecture="C3D, UCF-101 split 1 fine-tuned from Sports-1M (mmaction2 0.x)",
        num_classes=101, class_names=UCF101_CLASSES, preprocess=SEED_PREPROCESS,
        accuracy="83.27 top-1 / 95.90 top-5 (UCF-101 split 1, 10 clips x centre crop)", reported_in=_MMACTION2_ZOO_0X,
    ),
    Pretrained(
        name="c3d-sports1m-caffe",
        url="http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle",
        file_name="c3d.pickle", format="caffe", sha256_prefix=None,
        architecture="C3D converted from the original Caffe model (Sports-1M, 487 classes); Caffe pool5",
        num_classes=487, class_names=None, preprocess=CAFFE_PREPROCESS, accuracy="",
        reported_in="https://github.com/DavideA/c3d-pytorch (conversion of the Caffe model of "
                    "https://github.com/facebookarchive/C3D)",
    ),
    Pretrained(
        name="c3d-sports1m-paddle",
        url=None, file_name="c3d.pdparams", format="paddle", sha256_prefix=None,
        architecture="C3D, Sports-1M pretrained (the seed's PaddleC3D starting point)", num_classes=None,
        class_names=None, preprocess=SEED_PREPROCESS, accuracy="",
        reported_in="the seed's PaddleC3D README", manual=_PADDLE_PAN,
    ),
    Pretrained(
        name="c3d-ucf101-paddle",
        url=None, file_name="best_model.pdparams", format="paddle", sha256_prefix=None,
        architecture="C3D, UCF-101 split 1 fine-tuned by the seed's PaddleC3D recipe", num_classes=101,
        class_names=UCF101_CLASSES, preprocess=SEED_PREPROCESS,
        accuracy="83.27 top-1 / 95.96 top-5 (UCF-101 split 1, 10 clips x centre crop)",
        reported_in="the seed's PaddleC3D README", manual=_PADDLE_PAN,
    ),
)

_BY_NAME = {entry.name: entry for entry in REGISTRY}


def register(entry: Pretrained, replace: bool = False) -> None:
    """Add `entry` (your own weights on your own server, say) so that its name loads like the built-in ones."""
    if entry.name in _BY_NAME and not replace:
        raise WeightsError(f"{entry.name}: already a registered weight name (pass replace=True to change it)")
    if not entry.name or not looks_like_name(entry.name):
        raise WeightsError(f"{entry.name!r}: a weight name may not be empty or hold '/', '\\' or '.'")
    _BY_NAME[entry.name] = entry


def unregister(name: str) -> None:
    _BY_NAME.pop(name, None)


def entries() -> list[Pretrained]:
    return list(_BY_NAME.values())


def names() -> list[str]:
    return list(_BY_NAME)


def find(name: str) -> Pretrained:
    """The entry called `name`; a WeightsError listing the close names otherwise."""
    entry = _BY_NAME.get(name)
    if entry is None:
        raise WeightsError(f"{name}: no such weights file, and not a known weight name{close_names(name)}; "
                           f"`c3d weights list` shows them all")
    return entry


def lookup(name: str) -> Pretrained | None:
    return _BY_NAME.get(name)


def by_file_name(file_name: str) -> Pretrained | None:
    """The entry whose file is called `file_name` (how `c3d weights verify PATH` matches a file)."""
    return next((e for e in _BY_NAME.values() if e.file_name == file_name), None)


def close_names(name: str) -> str:
    """", did you mean 'a' or 'b'" for the registry names close to `name` ("" when none is)."""
    close = difflib.get_close_matches(name, list(_BY_NAME), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def looks_like_name(text: str) -> bool:
    """Whether `text` could be a registry name rather than a path (no folder, no file extension)."""
    return bool(text) and "/" not in text and "\\" not in text and "." not in text


__all__ = ["REGISTRY", "UCF101_CLASSES", "Pretrained", "by_file_name", "close_names", "entries", "find",
           "looks_like_name", "lookup", "names", "register", "unregister"]
