"""The registry of public C3D weight files: every entry is complete and consistent with its publisher's naming."""

from __future__ import annotations

import re

import pytest

from c3dnet.errors import WeightsError
from c3dnet.preprocess import SEED_PREPROCESS
from c3dnet.weights.registry import (
    REGISTRY,
    UCF101_CLASSES,
    Pretrained,
    by_file_name,
    find,
    looks_like_name,
    names,
    register,
    unregister,
)


def test_entries_are_complete_and_their_hashes_match_their_file_names() -> None:
    assert len(REGISTRY) >= 5 and len(set(names())) == len(names())
    for entry in REGISTRY:
        assert looks_like_name(entry.name)
        assert (entry.url is None) == bool(entry.manual)
        if entry.url:
            assert entry.url.endswith("/" + entry.file_name)
        if entry.format == "mmaction2":  # mmaction2 publishes the first 8 hex digits of the SHA-256 in the name
            assert re.fullmatch("[0-9a-f]{8}", entry.sha256_prefix)
            assert entry.file_name.endswith(f"-{entry.sha256_prefix}.pth")
        if entry.class_names is not None:
            assert len(entry.class_names) == entry.num_classes
        assert by_file_name(entry.file_name) is entry
    ucf = find("c3d-ucf101-mmaction2")
    assert ucf.class_names == UCF101_CLASSES and ucf.preprocess == SEED_PREPROCESS
    assert "83.08" in ucf.accuracy and "95.93" in ucf.accuracy
    assert "83.27" in find("c3d-ucf101-mmaction2-0x").accuracy
    assert find("c3d-sports1m-caffe").sha256_prefix is None and find("c3d-sports1m-caffe").num_classes == 487


def test_ucf101_classes_are_classind_order() -> None:
    assert len(UCF101_CLASSES) == 101 and len(set(UCF101_CLASSES)) == 101
    # Spot checks from classInd.txt: "1 ApplyEyeMakeup", "36 HammerThrow", "37 HandstandPushups", "101 YoYo".
    assert UCF101_CLASSES[0] == "ApplyEyeMakeup" and UCF101_CLASSES[35] == "HammerThrow"
    assert UCF101_CLASSES[36] == "HandstandPushups" and UCF101_CLASSES[100] == "YoYo"
    # classInd.txt is sorted case-insensitively (Hammering before HammerThrow, JumpingJack before JumpRope).
    assert list(UCF101_CLASSES) == sorted(UCF101_CLASSES, key=str.lower)


def test_register_refuses_duplicates_and_path_like_names() -> None:
    entry = Pretrained("mine", "http://127.0.0.1:1/x.pth", "x.pth", "mmaction2", None, "t", None, None,
                       SEED_PREPROCESS, "", "tests")
    register(entry)
    try:
        assert find("mine") is entry
        with pytest.raises(WeightsError, match="already a registered weight name"):
            register(entry)
    finally:
        unregister("mine")
    for bad in ("a/b", "w.pth", ""):
        with pytest.raises(WeightsError, match="may not be empty"):
            register(Pretrained(bad, None, "x", "caffe", None, "", None, None, SEED_PREPROCESS, "", "", manual="m"))
    with pytest.raises(WeightsError, match=r"c3d-sports1m: .*did you mean 'c3d-sports1m-"):
        find("c3d-sports1m")
