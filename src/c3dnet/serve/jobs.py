"""The work behind one request, run in the decoding pool: open the upload safely, check it against the limits before
decoding it, cut clips, get their rows from the model thread (`DynamicBatcher`), and build the same records as
`c3d predict --json` / `--timeline` and the same rows as `c3d extract`.

An upload is opened only as the single-file container its content and its name agree on
(`c3dnet.data.containers`), on one decoding thread, with its frame size, length and the size of the answer checked
before any frame is decoded (`open_upload`). Its decoding ticks the request's `RequestGuard` on every packet and
frame, so a cancelled request stops within a frame, a request past its CPU budget is refused, and requests take
turns on the decoding slots.

Clips are cut by the commands' own code. `prediction.predict_video` (the 10-clip test sampling) and
`prediction.predict_timeline` run through `BatchedRunner`, a stand-in for `ClipRunner` whose forward passes are
the model thread's shared batches; features come from `inference.clips.clip_batches` over a `ClipPlan` (the loop
of `c3dnet.extract_features`), each CHUNK clips queued as soon as they are decoded so that decoding overlaps the
model.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from c3dnet.data import sampling
from c3dnet.data.containers import UnsupportedContainer, choose_demuxer
from c3dnet.data.decode import FrameCountChanged, Video, VideoInfo, read_frames
from c3dnet.data.records import FrameLimits, LimitExceeded, NotAVideo, NoVideoStream
from c3dnet.errors import C3DError, DataError
from c3dnet.inference.clips import ClipPlan, CropSet, clip_batches, frame_views
from c3dnet.inference.prediction import predict_timeline, predict_video
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.preprocess import Preprocess
from c3dnet.serve.batcher import DynamicBatcher
from c3dnet.serve.fairness import RequestGuard
from c3dnet.serve.uploads import RequestError, Upload

CHUNK = 8
"""Sliding clips queued together: small enough that other requests' clips join the same batches."""

MAX_THUMBNAILS = 64
THUMB_HEIGHT = 128
JSON_BYTES_PER_VALUE = 24  # a float32 value printed as JSON, with its separator: at most about this
TIMELINE_BYTES_PER_CLIP = 160  # a timeline clip's frames and times, before its top-k
TOP_K_BYTES = 80  # one {"label", "index", "prob"} entry


@dataclass(frozen=True)
class Limits:
    """What every request is held to, checked before the work it bounds.

    Attributes:
        max_duration_s: longest video, in seconds (from its packets, before it is decoded).
        autorotate: turn frames as the video's display matrix says.
        frames: the largest frames (pixels, aspect ratio), from the stream header.
        cpu_budget_s: most CPU seconds one request's decoding may take.
        max_response_bytes: largest answer (features, timeline), estimated before decoding.
    """

    max_duration_s: float = 600.0
    autorotate: bool = True
    frames: FrameLimits = FrameLimits()
    cpu_budget_s: float | None = None
    max_response_bytes: int | None = None


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
    """What `c3d extract` computes (its recipe), and whether the answer is .npy bytes (4 per value), not JSON."""

    recipe: FeatureRecipe = FeatureRecipe()
    npy: bool = False


@dataclass
class Job:
    """One request's work: the model thread, the opened upload, the limits, the guard and a clip counter."""

    batcher: DynamicBatcher
    upload: Upload
    limits: Limits
    guard: RequestGuard
    on_clips: Callable[[int], object] | None = None
    video: Video | None = None
    info: VideoInfo | None = None

    def count(self, clips: int) -> None:
        if self.on_clips is not None:
            self.on_clips(clips)

    def refuse(self, error: DataError) -> RequestError:
        """A decoding error as the client should read it: under its own file name, without CLI advice."""
        if isinstance(error, NotAVideo):
            return RequestError(415, f"{self.upload.name}: not a video file that FFmpeg can read (checked by its "
                                     "content, not its name), or one cut off before its end; upload a whole video "
                                     "such as .mp4, .avi, .webm or .mkv")
        status = 415 if isinstance(error, (UnsupportedContainer, NoVideoStream)) else \
            413 if isinstance(error, LimitExceeded) else 422
        text = str(error).replace(str(self.upload.path), self.upload.name)
        text = text.replace(" (or use --skip-bad)", "").replace("remove it from the dataset", "upload another file")
        return RequestError(status, text)


class BatchedRunner:
    """What `predict_video` needs of a `ClipRunner` (`preprocess`, `runner(clips) -> rows`), computed in the model
    thread's shared batches; the request's decoding slot is free while it waits for them."""

    def __init__(self, job: Job, output: str) -> None:
        self.job, self.output = job, output
        self.preprocess: Preprocess = job.batcher.runner(output).preprocess

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        self.job.count(len(clips))
        with self.job.guard.paused():
            return self.job.batcher.submit(clips, self.output, self.job.guard.cancel)


def open_upload(job: Job) -> None:
    """Open the upload as its container, count its frames, and check its size and length before decoding it
    (`job.video`, `job.info`).

    Raises:
        RequestError: 415 not a single-file video container (by content and name) or no video stream; 413 past
            a limit (frame size, aspect ratio, duration); 422 unreadable.
    """
    upload, limits = job.upload, job.limits
    try:
        demuxer = choose_demuxer(upload.path, upload.name)
        video = Video(upload.path, demuxer=demuxer, name=upload.name, limits=limits.frames, guard=job.guard,
                      threads=1)
        if video.cheap_index() is None:  # an AVI, MPEG-TS, ...: its frames are counted by decoding them
            _check_duration(upload, video.scan()[1], limits)
        job.info = video.info(limits.autorotate)
    except DataError as e:
        raise job.refuse(e) from None
    job.video = video
    info = job.info
    _check_duration(upload, info.num_frames / info.fps if info.fps > 0 else 0.0, limits)
    if info.num_frames < 1:
        raise RequestError(422, f"{upload.name}: the video has no frames")


def _check_duration(upload: Upload, seconds: float, limits: Limits) -> None:
    if seconds > limits.max_duration_s:
        raise RequestError(413, f"{upload.name}: the video is {seconds:.0f} s long; this server takes videos up "
                                f"to {limits.max_duration_s:g} s (--max-duration); trim it and try again")


def check_response(job: Job, estimate: int, what: str) -> None:
    """413 before any decoding when the answer would be larger than the limit."""
    limit = job.limits.max_response_bytes
    if limit is not None and estimate > limit:
        raise RequestError(413, f"{job.upload.name}: {what} would take about {estimate / 2**20:.0f} MB, more than "
                                f"this server's limit of {limit / 2**20:g} MB per answer (--max-response-mb); ask "
                                "for fewer rows (a larger stride, fewer segments, video_mean) or crops, or for .npy "
                                "(Accept: application/x-npy)")


def _sliding_clips(job: Job, pre: Preprocess, stride: int, fps: Fraction | None) -> int:
    """How many sliding clips a plan will have, from the frame count (and rate) alone."""
    info = job.info
    n = info.num_frames if fps is None or info.fps <= 0 else int(np.ceil(info.num_frames * float(fps) / info.fps))
    return len(sampling.sliding_start_frames(max(n, 1), pre.clip_len, stride, pre.frame_interval))


def sliding_rows(job: Job, output: str, plan: ClipPlan, crops: CropSet | None = None) -> np.ndarray:
    """Rows (num_clips * crops, D) of the clips of `plan` (each seen through `crops`, the centre crop by default),
    decoding the video once, as `c3d extract` cuts them; chunks are queued while the next ones decode."""
    pre = job.batcher.runner(output).preprocess
    size = pre.resize_target(job.info.height, job.info.width)
    queued, cancel = [], job.guard.cancel
    per_clip = len(crops or CropSet())
    for clips in clip_batches(job.video, plan, pre, size, CHUNK * per_clip, job.limits.autorotate, crops):
        with job.guard.paused():  # waits only while the queue is full
            queued += job.batcher.enqueue(clips, output, cancel)  # raises Cancelled once `cancel` is set
        job.count(len(clips))
    with job.guard.paused():
        return job.batcher.gather(queued, cancel)


def thumbnails(job: Job, count: int) -> list[dict[str, Any]]:
    """`count` evenly spaced frames as small JPEG data URLs, for pages whose browser cannot play the video."""
    import cv2

    info = job.info
    count = min(count, MAX_THUMBNAILS, info.num_frames)
    frames_at = np.unique(np.linspace(0, info.num_frames - 1, count).round().astype(np.int64))
    width = max(1, round(info.width * THUMB_HEIGHT / max(info.height, 1)))
    frames = read_frames(job.video, frames_at, (THUMB_HEIGHT, width), autorotate=job.limits.autorotate)
    out = []
    for i, frame in zip(frames_at.tolist(), frames):
        ok, jpeg = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])  # RGB -> BGR
        if ok:
            out.append({"frame": i, "time_s": i / info.fps if info.fps > 0 else None,
                        "image": "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")})
    return out


def _replanned(job: Job, work: Callable[[], Any]) -> Any:
    """`work()`, once more if decoding showed fewer frames than the container lists (its count is then FFmpeg's);
    decoding errors as the client reads them."""

    def again() -> Any:
        job.info = job.video.info(job.limits.autorotate)
        return work()

    try:
        try:
            return work()
        except FrameCountChanged:
            return again()
    except DataError as e:
        raise job.refuse(e) from None


def predict_job(job: Job, options: PredictOptions, class_names: list[str]) -> dict[str, Any]:
    """The `c3d predict --json` record of the upload (its `video` is the uploaded file's name), plus its
    `timeline` (the `--timeline` JSON, with clip end times) and, if asked, `thumbnails`.

    The timeline's clips reach the model CHUNK at a time, so a cancelled request stops within CHUNK clips."""
    open_upload(job)
    runner = BatchedRunner(job, "logits")
    pre, info = runner.preprocess, job.info
    thumb_width = max(1, round(info.width * THUMB_HEIGHT / max(info.height, 1)))
    check_response(job, _sliding_clips(job, pre, options.stride, options.fps) *
                   (TIMELINE_BYTES_PER_CLIP + options.top_k * TOP_K_BYTES) +
                   min(options.thumbnails, MAX_THUMBNAILS) * THUMB_HEIGHT * thumb_width // 2, "the timeline")
    autorotate = job.limits.autorotate

    def work() -> tuple:
        prediction = predict_video(runner, job.video, class_names, options.clips, options.average, autorotate,
                                   fps=options.fps)
        timeline = predict_timeline(runner, job.video, class_names, options.stride, batch_size=CHUNK,
                                    autorotate=autorotate, fps=options.fps)
        return prediction, timeline

    prediction, timeline = _replanned(job, work)
    record = prediction.to_dict(options.top_k)
    record["video"] = job.upload.name
    record["timeline"] = {**timeline.to_dict(options.top_k), "video": job.upload.name}
    if options.thumbnails > 0:
        record["thumbnails"] = _replanned(job, lambda: thumbnails(job, options.thumbnails))
    return record


@dataclass(frozen=True)
class Features:
    """The rows `c3d extract` would write for the upload, and the frames and times each row covers."""

    video: str
    recipe: FeatureRecipe
    rows: np.ndarray  # (num_clips, D), (segments, D), or (D,) with video_mean
    spans: np.ndarray  # (rows, 4): first, last source frame, start s, end s (NaN: unknown)
    fps: float
    num_frames: int
    crop_boxes: tuple[dict[str, Any], ...] = ()  # each view's box in the resized frames (as the manifest's)

    def to_dict(self) -> dict[str, Any]:
        spans = [{"start_frame": int(a), "end_frame": int(b), "time_s": None if np.isnan(t0) else float(t0),
                  "end_s": None if np.isnan(t1) else float(t1)} for a, b, t0, t1 in self.spans.tolist()]
        return {"video": self.video, **self.recipe.to_dict(), "fps": self.fps, "num_frames": self.num_frames,
                "shape": list(self.rows.shape), "dtype": "float32", "crop_boxes": list(self.crop_boxes),
                "spans": spans, "features": self.rows.tolist()}


def features_job(job: Job, options: FeatureOptions, dim: int) -> Features:
    """The upload's features (rows of `dim` values), as `c3d extract` computes them with the same recipe."""
    open_upload(job)
    recipe = options.recipe
    pre = job.batcher.runner(recipe.layer).preprocess
    try:
        recipe.check_model(dim, pre)
        views = frame_views(job.upload.name, *pre.resize_target(job.info.height, job.info.width), pre,
                            recipe.crop_set)
    except C3DError as e:
        raise RequestError(422, str(e)) from None
    rows = recipe.rows(_sliding_clips(job, pre, recipe.stride, recipe.fps))
    values = rows * recipe.num_crops * dim  # every crop's row is in the answer
    size = values * 4 if options.npy else values * JSON_BYTES_PER_VALUE + rows * TIMELINE_BYTES_PER_CLIP
    what = f"{rows} rows of {recipe.num_crops} crops" if recipe.num_crops > 1 else f"{rows} rows"
    check_response(job, size, f"{what} of {dim} features")

    def work() -> tuple[ClipPlan, np.ndarray]:
        plan = ClipPlan.of(job.video, job.info.num_frames, pre, recipe.stride, recipe.fps)
        return plan, sliding_rows(job, recipe.layer, plan, recipe.crop_set)

    plan, clip_rows = _replanned(job, work)
    return Features(video=job.upload.name, recipe=recipe, rows=recipe.finish(clip_rows),
                    spans=plan.spans(recipe.groups(len(plan.indices))), fps=job.info.fps,
                    num_frames=job.info.num_frames, crop_boxes=tuple(v.to_dict() for v in views))
