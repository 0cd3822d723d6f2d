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
    >>> from c3dnet.features import ClipRunner, ExtractOptions, extract
    >>> runner = ClipRunner(model, "fc6", device)                                        # doctest: +SKIP
    >>> summary = extract(records, runner, "feats/", ExtractOptions(video_mean=True, l2=True))  # doctest: +SKIP

Modules, by role:
- `clips`: a video -> its sliding clips, decoded once in bounded memory (`stream_clips`);
- `options`: what an extraction computes (`ExtractOptions`) and what it did (`ExtractSummary`);
- `manifest`: the manifest entries and the merged manifest; `output`: the output folder (`OutputDir`: what is
  done, temporaries, failures, locks); `locks`: per-video lock files;
- `decoders`: the decoder processes and their messages; `batcher`: clips of many videos -> fixed-size batches
  -> rows; `writers`: a video's rows and the threads that write finished videos;
- `extract`: `extract()` itself: plan, dispatch, clean-up.
The model runs in `c3dnet.engine.runner.ClipRunner` (re-exported here), as for testing and prediction.
"""

from __future__ import annotations

from c3dnet.engine.runner import OUTPUTS, ClipRunner, PendingRows  # re-exported: the runner extraction uses
from c3dnet.features.clips import clip_frames, clip_starts, stream_clips
from c3dnet.features.extract import extract
from c3dnet.features.locks import VideoLock
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
    "ManifestEntry",
    "OutputDir",
    "PendingRows",
    "VideoLock",
    "clip_frames",
    "clip_starts",
    "extract",
    "load_features",
    "output_keys",
    "read_manifest",
    "stream_clips",
    "write_merged_manifest",
]
