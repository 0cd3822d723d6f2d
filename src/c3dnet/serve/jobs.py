"""The work behind one request, run in the decoding pool: check the upload, cut clips, get their rows from the
model thread (`DynamicBatcher`), and build the same records as `c3d predict --json` / `--timeline` and the same
rows as `c3d extract`.

Clips are cut by the commands' own code. `prediction.predict_video` (the 10-clip test sampling) and
`prediction.predict_timeline` run through `BatchedRunner`, a stand-in for `ClipRunner` whose forward passes are
the model thread's shared batches; features come from `features.clips.clip_batches` over a `ClipPlan` (the loop
of `c3dnet.extract_features`), each CHUNK clips queued as soon as they are decoded so that decoding overlaps the
model. The request's `cancel` event is checked every CHUNK clips and while waiting for the model: a client that
went away stops its decoding there.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from c3dnet.data.decode import VideoInfo, read_frames, video_info
from c3dnet.errors import DataError
from c3dnet.features.clips import ClipPlan, clip_batches, finish_rows
from c3dnet.features.pooling import row_groups
from c3dnet.prediction import predict_timeline, predict_video
from c3dnet.preprocess import Preprocess
from c3dnet.serve.batcher import Cancelled, DynamicBatcher
from c3dnet.serve.uploads import RequestError, Upload

CHUNK = 8
"""Sliding clips queued together: small enough that other requests' clips join the same batches."""

MAX_THUMBNAILS = 64
THUMB_HEIGHT = 128


@dataclass(frozen=True)
class Limits:
    """What every request is held to: the longest video (seconds), and whether frames are turned upright."""

    max_duration_s: float = 600.0
    autorotate: bool = True


@dataclass(frozen=True)
class PredictOptions:
    """`c3d predict --top-k --clips --average --stride --fps`, and thumbnails for the page."""

    top_k: int = 5
    clips: int = 10
    average: str = "score"
    stride: int = 16
    fps: Fraction | None = None
    thumbnails: int = 0


@dataclass(frozen=True)
class FeatureOptions:
    """`c3d extract --layer --stride --fps --video-mean --segments --segment-rule --l2`."""

    layer: str = "fc6"
    stride: int = 16
    fps: Fraction | None = None
    video_mean: bool = False
    segments: int = 0
    segment_rule: str = "uniform"
    l2: str = "none"


class BatchedRunner:
    """What `predict_video` needs of a `ClipRunner` (`preprocess`, `runner(clips) -> rows`), computed in the model
    thread's shared batches."""

    def __init__(self, batcher: DynamicBatcher, output: str, cancel: threading.Event | None,
                 on_clips: Callable[[int], object] | None = None) -> None:
        self.batcher, self.output, self.cancel, self.on_clips = batcher, output, cancel, on_clips
        self.preprocess: Preprocess = batcher.runner(output).preprocess

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        if self.on_clips is not None:
            self.on_clips(len(clips))
        return self.batcher.submit(clips, self.output, self.cancel)


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("the request was cancelled")


def probe(upload: Upload, limits: Limits) -> VideoInfo:
    """The upload's frame count, rate and size, if PyAV finds a decodable video stream in it and it is no longer
    than the limit.

    Raises:
        RequestError: 415 not a video (by content, whatever its name) or no video stream; 422 unreadable;
            413 too long.
    """
    import av

    path = upload.path
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                raise RequestError(415, f"{upload.name}: has no video stream (it holds {', '.join(kinds)}); "
                                        "upload a video file")
    except RequestError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        raise RequestError(415, f"{upload.name}: not a video file that FFmpeg can read (checked by its content, "
                                "not its name), or one cut off before its end; upload a whole video such as .mp4, "
                                ".avi, .webm or .mkv") from None
    try:
        info = video_info(path, limits.autorotate)
    except DataError as e:
        raise RequestError(422, _message(e, upload)) from None
    duration = info.num_frames / info.fps if info.fps > 0 else 0.0
    if duration > limits.max_duration_s:
        raise RequestError(413, f"{upload.name}: the video is {duration:.0f} s long; this server takes videos up "
                                f"to {limits.max_duration_s:g} s (--max-duration); trim it and try again")
    if info.num_frames < 1:
        raise RequestError(422, f"{upload.name}: the video has no frames")
    return info


def _message(error: Exception, upload: Upload) -> str:
    """A decoding error as the client should read it: under its own file name, without CLI advice."""
    text = str(error).replace(str(upload.path), upload.name)
    return text.replace(" (or use --skip-bad)", "").replace("remove it from the dataset", "upload another file")


def sliding_rows(batcher: DynamicBatcher, upload: Upload, info: VideoInfo, output: str, plan: ClipPlan,
                 limits: Limits, cancel: threading.Event | None, on_clips: Callable[[int], object] | None = None,
                 ) -> np.ndarray:
    """Rows (num_clips, D) of the clips of `plan`, decoding the video once, as `c3d extract` cuts them; chunks are
    queued while the next ones decode."""
    pre = batcher.runner(output).preprocess
    size = pre.resize_target(info.height, info.width)
    queued = []
    for clips in clip_batches(upload.path, plan, pre, size, CHUNK, limits.autorotate):
        queued += batcher.enqueue(clips, output, cancel)  # raises Cancelled once `cancel` is set
        if on_clips is not None:
            on_clips(len(clips))
    return batcher.gather(queued, cancel)


def thumbnails(upload: Upload, info: VideoInfo, count: int, limits: Limits) -> list[dict[str, Any]]:
    """`count` evenly spaced frames as small JPEG data URLs, for pages whose browser cannot play the video."""
    import cv2

    count = min(count, MAX_THUMBNAILS, info.num_frames)
    frames_at = np.unique(np.linspace(0, info.num_frames - 1, count).round().astype(np.int64))
    width = max(1, round(info.width * THUMB_HEIGHT / max(info.height, 1)))
    frames = read_frames(upload.path, frames_at, (THUMB_HEIGHT, width), autorotate=limits.autorotate)
    out = []
    for i, frame in zip(frames_at.tolist(), frames):
        ok, jpeg = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])  # RGB -> BGR
        if ok:
            out.append({"frame": i, "time_s": i / info.fps if info.fps > 0 else None,
                        "image": "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")})
    return out


def predict_job(batcher: DynamicBatcher, upload: Upload, options: PredictOptions, class_names: list[str],
                limits: Limits, cancel: threading.Event | None = None,
                on_clips: Callable[[int], object] | None = None) -> dict[str, Any]:
    """The `c3d predict --json` record of the upload (its `video` is the uploaded file's name), plus its
    `timeline` (the `--timeline` JSON, with clip end times) and, if asked, `thumbnails`.

    The timeline's clips reach the model CHUNK at a time, so a cancelled request stops within CHUNK clips."""
    info = probe(upload, limits)
    check_cancel(cancel)
    runner = BatchedRunner(batcher, "logits", cancel, on_clips)
    try:
        prediction = predict_video(runner, upload.path, class_names, options.clips, options.average,
                                   limits.autorotate, fps=options.fps)
        timeline = predict_timeline(runner, upload.path, class_names, options.stride, batch_size=CHUNK,
                                    autorotate=limits.autorotate, fps=options.fps)
        thumbs = thumbnails(upload, info, options.thumbnails, limits) if options.thumbnails > 0 else None
    except DataError as e:
        raise RequestError(422, _message(e, upload)) from None
    record = prediction.to_dict(options.top_k)
    record["video"] = upload.name
    record["timeline"] = {**timeline.to_dict(options.top_k), "video": upload.name}
    if thumbs is not None:
        record["thumbnails"] = thumbs
    return record


@dataclass(frozen=True)
class Features:
    """The rows `c3d extract` would write for the upload, and the frames and times each row covers."""

    video: str
    options: FeatureOptions
    rows: np.ndarray  # (num_clips, D), (segments, D), or (D,) with video_mean
    spans: np.ndarray  # (rows, 4): first, last source frame, start s, end s (NaN: unknown)
    fps: float
    num_frames: int

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        spans = [{"start_frame": int(a), "end_frame": int(b), "time_s": None if np.isnan(t0) else float(t0),
                  "end_s": None if np.isnan(t1) else float(t1)} for a, b, t0, t1 in self.spans.tolist()]
        return {"video": self.video, "layer": o.layer, "stride": o.stride,
                "sample_fps": str(o.fps) if o.fps is not None else "", "segments": o.segments,
                "segment_rule": o.segment_rule, "video_mean": o.video_mean, "l2": o.l2,
                "fps": self.fps, "num_frames": self.num_frames, "shape": list(self.rows.shape), "dtype": "float32",
                "spans": spans, "features": self.rows.tolist()}


def features_job(batcher: DynamicBatcher, upload: Upload, options: FeatureOptions, limits: Limits,
                 cancel: threading.Event | None = None, on_clips: Callable[[int], object] | None = None,
                 ) -> Features:
    """The upload's features, as `c3d extract --layer --stride --fps --video-mean --segments --l2` computes them."""
    info = probe(upload, limits)
    pre = batcher.runner(options.layer).preprocess
    try:
        plan = ClipPlan.of(upload.path, info.num_frames, pre, options.stride, options.fps)
        rows = sliding_rows(batcher, upload, info, options.layer, plan, limits, cancel, on_clips)
    except DataError as e:
        raise RequestError(422, _message(e, upload)) from None
    groups = row_groups(len(rows), options.segments, options.segment_rule, options.video_mean)
    return Features(video=upload.name, options=options,
                    rows=finish_rows(rows, options.video_mean, options.l2, options.segments, options.segment_rule),
                    spans=plan.spans(groups), fps=info.fps, num_frames=info.num_frames)
