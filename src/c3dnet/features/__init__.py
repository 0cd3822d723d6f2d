"""Feature extraction at scale: streaming decode, clips batched across videos, resumable, concurrent-safe.

Every video is decoded once, front to back, in chunks (`iter_frames`), resized in the decoder and centre-cropped
as the weights' `Preprocess` says; a small buffer keeps only the frames that the next sliding clips still need,
so memory stays bounded whatever the video's length. Decoder processes (one video each, handed out as they
free up) send clips through shared memory; the main process fills fixed-size pinned batches from them, mixing
videos, so the device never waits for one video's tail. Rows of long videos go straight to a temporary `.npy`,
written at each row's offset (its space allocated when the video starts, so a full disk is one clear error).

Output folder layout (several processes or torchrun ranks may share it):
    OUT/<key>.npy            (num_clips, dim) float32, or (dim,) with `video_mean`; written to a temporary
                             file and renamed, so it is either absent or complete
    OUT/.parts/<key>.json    this video's manifest entry, written (atomically) after its .npy: the mark of done
    OUT/.parts/<key>.failed  why an unreadable video failed (with skip_bad)
    OUT/.locks/<key>.lock    "pid host" of the process working on it (O_CREAT|O_EXCL; dead pids are reclaimed)
    OUT/manifest.jsonl       every finished video's entry, merged from .parts at the end of each run
    OUT/keys.csv             "key,video" per finished video (a key is the file stem; clashing names get a hash)
    OUT/failed.txt           "path<TAB>reason" per failed video or input that cannot be listed, merged likewise

Example:
    >>> from c3dnet.features import ClipRunner, ExtractOptions, FeatureRecipe, extract
    >>> recipe = FeatureRecipe("fc6", video_mean=True, l2="output")
    >>> runner = ClipRunner(load_backend("c3d.safetensors"), recipe.layer)              # doctest: +SKIP
    >>> summary = extract(records, runner, "feats/", ExtractOptions(recipe))            # doctest: +SKIP

Modules, by role:
- `options`: how an extraction computes its recipe (`ExtractOptions`) and what it did (`ExtractSummary`);
- `manifest`: the manifest entries and the merged manifest; `output`: the output folder (`OutputDir`: what is
  done, temporaries, failures, locks); `locks`: per-video lock files;
- `decoders`: the decoder processes and their messages; `batcher`: clips of many videos -> fixed-size batches
  -> rows; `writers`: a video's rows and the threads that write finished videos;
- `extract`: `extract()` itself: plan, dispatch, clean-up.
What is computed (`inference.recipe.FeatureRecipe`), the clips of a video (`inference.clips`) and the model
(`inference.runner.ClipRunner`) come from `c3dnet.inference`, as for testing, prediction and serving; they are
re-exported here.
"""

from __future__ import annotations

from c3dnet.features.extract import extract
from c3dnet.features.locks import HeartbeatLock
from c3dnet.features.manifest import (
    FAILED,
    LOCKS_DIR,
    MANIFEST,
    PARTS_DIR,
    TMP_TAG,
    ManifestEntry,
    load_features,
    output_keys,
    read_manifest,
    write_merged_manifest,
)
from c3dnet.features.options import ExtractOptions, ExtractSummary
from c3dnet.features.output import OutputDir
from c3dnet.inference.clips import clip_frames, clip_starts, stream_clips
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.inference.runner import OUTPUTS, ClipRunner, PendingRows

__all__ = [
    "FAILED",
    "LOCKS_DIR",
    "MANIFEST",
    "OUTPUTS",
    "PARTS_DIR",
    "TMP_TAG",
    "ClipRunner",
    "ExtractOptions",
    "ExtractSummary",
    "FeatureRecipe",
    "ManifestEntry",
    "OutputDir",
    "PendingRows",
    "HeartbeatLock",
    "clip_frames",
    "clip_starts",
    "extract",
    "load_features",
    "output_keys",
    "read_manifest",
    "stream_clips",
    "write_merged_manifest",
]
