"""The notebook API: classify a video, or extract its features, in one call, as the `c3d` commands do.

`predict` returns the record `c3d predict --json` prints for one video; `extract_features` returns the rows
`c3d extract` writes. Both take weights (a path to any format `load_model` reads, an ONNX file from `c3d export`, or
an OpenVINO folder from `c3d quantize`) or a loaded model, and a video path or an array of frames, and run through
the same inference core (`inference.runner.ClipRunner`) and the same clip sampling as the commands.

Example:
    >>> import c3dnet
    >>> c3dnet.predict("c3d_ucf101.safetensors", "v_Drumming_g01_c01.avi", top_k=3)            # doctest: +SKIP
    {'video': 'v_Drumming_g01_c01.avi', 'top_k': [{'label': 'Drumming', 'index': 26, 'prob': 0.97}, ...]}
    >>> feats = c3dnet.extract_features("c3d_sports1m.safetensors", "clip.mp4", layer="fc6")   # doctest: +SKIP
    >>> feats.shape                                           # one row per 16 frames            # doctest: +SKIP
    (11, 4096)
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from c3dnet.data.decode import ArrayVideo
    from c3dnet.export import OnnxC3D
    from c3dnet.features.options import ExtractSummary
    from c3dnet.inference.recipe import FeatureRecipe
    from c3dnet.inference.runner import ClipRunner
    from c3dnet.model import C3D

def _runner(model_or_weights: Any, output: str, device: str | torch.device, amp: bool,
            precision: str = "auto") -> ClipRunner:
    from c3dnet.inference.backends import load_backend, precision_of
    from c3dnet.inference.runner import ClipRunner

    return ClipRunner(load_backend(model_or_weights, device, precision_of(precision, amp)), output)


def _video(video: Any, source_fps: Fraction | None) -> str | os.PathLike[str] | ArrayVideo:
    from c3dnet.data.decode import ArrayVideo

    if isinstance(video, np.ndarray):
        return ArrayVideo(video, float(source_fps) if source_fps is not None else 0.0)
    return video


def _rates(fps: float | str | None, source_fps: float | str | None) -> tuple[Fraction | None, Fraction | None]:
    from c3dnet.data.timing import parse_rates

    return parse_rates(fps, source_fps, ("fps", "source_fps"))


def predict(
    model_or_weights: str | os.PathLike[str] | C3D | OnnxC3D,
    video: str | os.PathLike[str] | np.ndarray | ArrayVideo,
    *,
    top_k: int = 5,
    clips: int = 10,
    average: str = "score",
    device: str | torch.device = "auto",
    amp: bool = True,
    precision: str = "auto",
    autorotate: bool = True,
    fps: float | str | None = None,
    source_fps: float | str | None = None,
) -> dict[str, Any]:
    """The most probable classes of one video: `{"video", "top_k": [{"label", "index", "prob"}, ...]}`.

    Args:
        model_or_weights: a weights path (any format; `.onnx` runs through ONNX Runtime) or a loaded model.
        video: a video file, a frame folder, or uint8 RGB frames (T, H, W, 3) as they are shown.
        top_k: classes in the record.
        clips: evenly spaced clips averaged (10: the reference's test protocol).
        average: "score" (softmax of the mean clip logits, the reference's) or "prob" (mean probabilities).
        device: "auto", "cpu" or "cuda[:N]".
        amp: bf16 autocast on CUDA (False: fp32 where `precision` is "auto").
        precision: "auto", "fp32", "bf16" (on the CPU too) or "int8" (an OpenVINO folder from `c3d quantize`,
            which runs in int8 by itself), as `--precision` in the commands.
        autorotate: turn frames as the video's display matrix says (files only).
        fps: sample the video at this frame rate by presentation time first (`c3d predict --fps`).
        source_fps: the frame rate of an array of frames, or of a frame folder without recorded timestamps.
    """
    from c3dnet.inference.prediction import class_labels, predict_video

    fps, source = _rates(fps, source_fps)
    runner = _runner(model_or_weights, "logits", device, amp, precision)
    names = class_labels(runner.class_names, runner.dim)
    return predict_video(runner, _video(video, source), names, clips, average, autorotate, fps,
                         source).to_dict(top_k)


def extract_features(
    model_or_weights: str | os.PathLike[str] | C3D | OnnxC3D,
    video: str | os.PathLike[str] | np.ndarray | ArrayVideo,
    layer: str = "fc6",
    stride: int = 16,
    *,
    video_mean: bool = False,
    l2: str | bool | None = None,
    segments: int = 0,
    segment_rule: str = "uniform",
    batch_size: int = 32,
    device: str | torch.device = "auto",
    amp: bool = True,
    precision: str = "auto",
    autorotate: bool = True,
    fps: float | str | None = None,
    source_fps: float | str | None = None,
    crops: str | int = "center",
    crop_order: str | None = None,
    crop_axis: str | None = None,
    pca: str | os.PathLike[str] | None = None,
    pca_dim: int | None = None,
) -> np.ndarray:
    """C3D features of one video: the rows `c3d extract` writes, float32 (num_clips, dim), or (dim,); with
    `crops`, (num_clips, crops, dim), (crops, num_clips, dim) or (crops, dim) (`inference.recipe` has the shapes).

    Clips start every `stride` frames (16: non-overlapping, the paper's); a video shorter than a clip gives one
    clip that wraps around. `video_mean` averages the rows and `segments` pools them into that many segments;
    `l2` normalises, as `c3d extract --video-mean/--segments/--l2` do (`features.pooling` has the rules).

    Args:
        model_or_weights: a weights path (any format; `.onnx` runs through ONNX Runtime) or a loaded model.
        video: a video file, a frame folder, or uint8 RGB frames (T, H, W, 3) as they are shown.
        layer: "fc6" (the paper's), "fc7", "pool5" or "logits".
        stride: frames between clip starts.
        video_mean: return the mean row (dim,).
        l2: "none", "clip" (each clip row, before pooling) or "output" (each returned row); None: "output" with
            `segments`, else "none"; True/False: "output"/"none".
        segments: return this many segment rows (segments, dim), each the mean of its clips (0: none).
        segment_rule: "uniform" or "sultani" (UCF-Crime's released code).
        batch_size: clips per forward pass.
        device: "auto", "cpu" or "cuda[:N]".
        amp: bf16 autocast on CUDA (False: fp32 where `precision` is "auto").
        precision: "auto", "fp32", "bf16" (on the CPU too) or "int8" (an OpenVINO folder from `c3d quantize`,
            which runs in int8 by itself), as `--precision` in the commands.
        autorotate: turn frames as the video's display matrix says (files only).
        fps: sample the video at this frame rate by presentation time first (`c3d extract --fps`).
        source_fps: the frame rate of an array of frames, or of a frame folder without recorded timestamps.
        crops: "center", 5 or 10: torchvision's five or ten crops of each clip, in one batch (`c3d extract --crops`).
        crop_order: with crops, "tencrop" (torchvision's TenCrop, the default) or "urdmu".
        crop_axis: with crops, "second" ((num_clips, crops, dim), the default) or "first" ((crops, num_clips, dim)).
        pca: a PCA file (ActivityNet's HDF5: data/U, data/S, data/x_mean; or an .npz of those names): each row
            becomes `(x - x_mean) @ U[:, :pca_dim]`, last (`c3d extract --pca`).
        pca_dim: the PCA's components kept (default 500).
    """
    from c3dnet.data.decode import replanned, video_info
    from c3dnet.inference.clips import ClipPlan, clip_batches
    from c3dnet.inference.recipe import FeatureRecipe

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    recipe = FeatureRecipe(layer=layer, stride=stride, fps=fps, video_mean=video_mean, segments=segments,
                           segment_rule=segment_rule, l2=l2, crops=crops, crop_order=crop_order,
                           crop_axis=crop_axis, pca=pca, pca_dim=pca_dim)
    _, source_rate = _rates(None, source_fps)
    runner = _runner(model_or_weights, recipe.layer, device, amp, precision)
    recipe.check_model(runner.dim, runner.preprocess)
    source = _video(video, source_rate)

    def rows() -> np.ndarray:
        info = video_info(source, autorotate)
        plan = ClipPlan.of(source, info.num_frames, runner.preprocess, recipe.stride, recipe.fps, source_rate)
        size = runner.preprocess.resize_target(info.height, info.width)
        return np.concatenate([runner(clips) for clips in clip_batches(source, plan, runner.preprocess, size,
                                                                        batch_size, autorotate, recipe.crop_set)])

    return recipe.finish(replanned(rows))


def extract_features_ray(
    model_or_weights: str | os.PathLike[str] | C3D | OnnxC3D,
    inputs: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    recipe: FeatureRecipe | None = None,
    *,
    ray: str = "auto",
    gpus_per_actor: float | None = None,
    actors: int | None = None,
    decoders: int | None = None,
    cpus_per_actor: float | None = None,
    batch_size: int = 0,
    precision: str = "auto",
    source_fps: float | str | None = None,
    autorotate: bool = True,
    progress: bool = False,
) -> ExtractSummary:
    """`c3d extract --ray`: the features of many videos, computed on a Ray cluster, written to `out` as `c3d
    extract` writes them (one .npy per video, its times, the merged manifest, failed.txt); a rerun resumes.

    Args:
        model_or_weights: a weights path every node of the cluster sees (any format `load_model` reads, an `.onnx`,
            an OpenVINO folder), or a loaded model (shipped to the actors).
        inputs: video files, folders (searched recursively) or .txt lists, as `c3d extract` takes them.
        out: the output folder, on a file system every node mounts at the same path.
        recipe: what each video's rows are (`inference.recipe.FeatureRecipe`; the default: fc6 every 16 frames).
        ray: "auto", "local" or a cluster's address (`features.ray_extract.RayOptions`).
        gpus_per_actor, actors, decoders, cpus_per_actor: the cluster's share (None: from its resources).
        batch_size: clips per forward pass (0: 64 on GPU actors, 32 on CPU ones, as `c3d extract`).
        precision: as `--precision`.
        source_fps: the frame rate of frame folders without recorded timestamps.
        autorotate: turn frames as each video's display matrix says.
        progress: a progress bar of the videos.

    Unreadable videos and inputs go to `out/failed.txt` and the others are extracted (`--skip-bad`).
    """
    from c3dnet.data.sources import find_videos
    from c3dnet.features import ExtractOptions, OutputDir, output_keys
    from c3dnet.features.ray_extract import ModelSpec, RayOptions, extract_ray
    from c3dnet.inference.recipe import FeatureRecipe

    recipe = recipe or FeatureRecipe()
    _, source_rate = _rates(None, source_fps)
    found = find_videos(list(inputs), skip_bad=True)
    source = str(model_or_weights) if isinstance(model_or_weights, (str, os.PathLike)) else ""
    options = ExtractOptions(recipe, source_fps=source_rate, batch_size=batch_size, skip_bad=True, weights=source,
                             autorotate=autorotate)
    OutputDir(out).create().write_unlisted(found.skipped, found.searched)
    spec = ModelSpec(model_or_weights, recipe.layer, precision)
    return extract_ray(found.records, spec, out, options, RayOptions(ray, gpus_per_actor, actors, decoders,
                                                                     cpus_per_actor),
                       keys=output_keys(found.records), progress=progress)
