"""`c3d lite`: the whole chain on a small scale, as the seed's TIPC lite_train_lite_infer does.

    c3d lite [--full-size] [--work-dir DIR] [--json] [--set section.key=value ...]

synthetic data -> train one epoch -> test (10 clips) -> ONNX export (verified) -> ONNX predict (checked against
PyTorch) -> extract fc6 with ONNX Runtime -> the linear-SVM probe. Every step prints its result; a step whose
output disagrees with the previous one stops the chain with an error.

By default a tiny C3D runs on 40x40 frames: about 10 s on two CPU cores. `--full-size` runs the same
chain with the reference C3D (`C3DConfig`'s defaults: 78M parameters, 16 frames of 112x112, the seed's
preprocessing) on four synthetic 128x160 videos: about 40 s on two CPU cores (4.6 GB of memory), most of it the
model's own time (about 2 clips/s of inference there, 1 of training).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

HELP = "smoke-test the whole chain on synthetic data (tiny, or --full-size): synth, train 1 epoch, test, export, " \
       "ONNX predict/extract"

_RUN = ["optim.warmup_iters=0", "optim.epochs=1", "train.progress=false", "train.tensorboard=false",
        "train.plots=false", "train.checkpoint_every=1000"]


@dataclass(frozen=True)
class LiteScale:
    """One size of the chain: the synthetic data (`SynthParams` fields) and the training config overrides."""

    name: str
    synth: dict[str, int] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    extract_batch: int = 32  # extraction pads every batch to this many clips


TINY = LiteScale(
    "tiny",
    # 4 classes, 16 train / 8 test videos of 25 frames at 40x40.
    synth=dict(num_pairs=2, videos_per_class=6, groups=3, test_groups=1, frames=25, height=40, width=40),
    overrides=(
        # A tiny C3D (conv widths 8..64, fc 32, 8 frames of 32x32): seconds per step.
        "model.width_mult=0.125", "model.fc_dim=32", "model.clip_len=8", "model.crop_size=32", "model.dropout=0.0",
        "preprocess.short_side=36",
        "data.batch_size=4", "data.val_batch_size=4", "data.workers=0", "optim.lr=0.01", *_RUN,
    ),
)

FULL_SIZE = LiteScale(
    "full-size",
    # 2 classes, 2 train / 2 test videos of 17 frames (one 16-frame clip and a frame to spare) at 128x160, the
    # least that holds a 112 crop after the 128 short-side resize. Each test video costs 10 clips, and ONNX
    # predict runs them twice (ONNX Runtime and PyTorch): the test set is most of the run's time.
    synth=dict(num_pairs=1, videos_per_class=2, groups=2, test_groups=1, frames=17, height=128, width=160),
    overrides=(
        # The reference C3D and preprocessing (the config's defaults); batches of 1: 2 training iterations.
        # No validation pass: the test step scores the same videos with 10 clips right after.
        "data.batch_size=1", "data.val_batch_size=1", "data.workers=0", "optim.lr=0.001", "train.val_every=0",
        *_RUN,
    ),
    extract_batch=4,  # the 4 videos' one clip each: one batch, no padding clips at 0.4 s each
)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default=None, help="where every step writes (default: work_dirs/lite, or "
                                                         "work_dirs/lite_full with --full-size)")
    parser.add_argument("--full-size", action="store_true",
                        help="the reference C3D (16 frames of 112x112, 78M parameters) on 128x160 synthetic videos "
                             "instead of a tiny one: about 40 s on two CPU cores")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training config override on top of the lite settings, e.g. optim.epochs=3")
    parser.add_argument("--json", action="store_true", help="print every step's result as one JSON object at the end")


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from c3dnet.data.sources import load_source
    from c3dnet.data.synthetic import SynthParams, generate_synthetic
    from c3dnet.engine.config import load_config
    from c3dnet.engine.testing import TestOptions, test_weights
    from c3dnet.engine.train import train
    from c3dnet.errors import C3DError
    from c3dnet.export import DEFAULT_TOLERANCE, OnnxC3D, export_onnx
    from c3dnet.inference.prediction import class_labels
    from c3dnet.weights import load_model

    scale = FULL_SIZE if args.full_size else TINY
    work = Path(args.work_dir or ("work_dirs/lite_full" if args.full_size else "work_dirs/lite"))
    report: dict[str, dict] = {}
    torch.manual_seed(0)

    def step(n: int, name: str, summary: str, t0: float, **values) -> None:
        report[name] = {**values, "seconds": round(time.perf_counter() - t0, 2)}
        if not args.json:
            print(f"[{n}/6] {name}: {summary} ({report[name]['seconds']:.1f} s)", flush=True)

    t0 = time.perf_counter()
    params = SynthParams(**scale.synth)
    data = generate_synthetic(work / "data", params, workers=1)
    train_src, test_src = load_source(data, "train"), load_source(data, "test")
    step(1, "synthetic", f"{len(train_src.records)} train / {len(test_src.records)} test videos, "
         f"{len(test_src.class_names)} classes in {data}", t0, train_videos=len(train_src.records),
         test_videos=len(test_src.records), classes=len(test_src.class_names))

    t0 = time.perf_counter()
    cfg = load_config(None, list(scale.overrides) + args.overrides)
    result = train(cfg, data, work_dir=work / "train", device=args.device, overwrite=True)  # lite's own folder
    weights = result.last_path
    top1 = result.last_val.get("top1") if result.last_val else None
    val = f"val top-1 {100 * top1:.1f}%" if top1 is not None else "no validation"
    step(2, "train", f"{cfg.model.clip_len}x{cfg.model.crop_size}x{cfg.model.crop_size} clips, {result.epochs} "
         f"epoch, {result.iterations} iterations, mean loss {result.final_loss:.3f}, {val} -> {weights}", t0,
         iterations=result.iterations, final_loss=result.final_loss, val_top1=top1,
         parameters=sum(p.numel() for p in result.model.parameters()))

    t0 = time.perf_counter()
    tested = test_weights(weights, test_src, TestOptions.from_config(cfg, device=args.device))
    metrics = tested.result.metrics()
    step(3, "test", f"{metrics['clips_per_video']}-clip top-1 {100 * metrics['top1']:.1f}%, top-5 "
         f"{100 * metrics['top5']:.1f}%, mean class {100 * metrics['mean_class_accuracy']:.1f}% on "
         f"{metrics['num_videos']} videos", t0, **metrics)

    t0 = time.perf_counter()
    onnx_path = work / "model.onnx"
    # Verified before it is written: a difference beyond the tolerance raises ExportError.
    model = load_model(weights)
    exported = export_onnx(model, onnx_path, extra_metadata={"weights": str(weights)})
    step(4, "export", f"{onnx_path} ({exported.size_bytes / 1e6:.2f} MB), max |diff| / max |PyTorch| "
         f"{exported.worst_rel_diff:.2e}", t0, max_rel_diff=exported.worst_rel_diff,
         max_abs_diff=max(exported.max_abs_diff.values()), path=str(onnx_path))

    t0 = time.perf_counter()
    onnx_model = OnnxC3D(onnx_path)
    names = class_labels(onnx_model.class_names, onnx_model.num_classes)
    n, agree, correct, worst, worst_logits = _onnx_against_torch(onnx_model, model, test_src.records, names)
    if agree != n or worst > 1e-4 or worst_logits > DEFAULT_TOLERANCE:
        raise C3DError(f"{onnx_path}: ONNX predictions differ from PyTorch's ({agree}/{n} top-1 agree, "
                       f"max prob diff {worst:.2e}, max |logit diff| / max |logit| {worst_logits:.2e}); re-export "
                       f"with `c3d export --weights {weights} --out {onnx_path}` and report it if it persists")
    step(5, "onnx_predict", f"{n} videos, top-1 {100 * correct / n:.1f}%, same top-1 as PyTorch on {agree}/{n}, "
         f"max prob diff {worst:.1e}, max |logit diff| / max |logit| {worst_logits:.1e}", t0, videos=n,
         top1=correct / n, agree=agree, max_prob_diff=worst, max_rel_logit_diff=worst_logits)

    t0 = time.perf_counter()
    summary, probe = _extract_and_probe(onnx_model, onnx_path, train_src, test_src, work / "features",
                                        scale.extract_batch)
    step(6, "extract_probe", f"fc6 of {summary.done + summary.skipped} videos ({summary.frames_per_s:.0f} frames/s)"
         f", linear SVM top-1 {100 * probe.accuracy:.1f}%", t0, videos=summary.done + summary.skipped,
         frames_per_s=summary.frames_per_s, probe_accuracy=probe.accuracy)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _onnx_against_torch(onnx_model, model, records, names: list[str]) -> tuple[int, int, int, float, float]:
    """(videos, same top-1, right top-1, max prob diff, max clip-logit diff / logit scale) of ONNX Runtime's 10-clip
    predictions against PyTorch's on `records`."""
    import numpy as np
    import torch

    from c3dnet.inference.prediction import predict_video
    from c3dnet.inference.runner import ClipRunner

    class TappedRunner(ClipRunner):
        """A `ClipRunner` that keeps the outputs it returned last: the clip logits `predict_video` averaged."""

        last: np.ndarray

        def __call__(self, clips: torch.Tensor) -> np.ndarray:
            self.last = super().__call__(clips)
            return self.last

    torch_runner, onnx_runner = TappedRunner(model, "logits"), TappedRunner(onnx_model, "logits")
    agree, worst, worst_logits, correct = 0, 0.0, 0.0, 0
    for record in records:
        p_onnx = predict_video(onnx_runner, record.path, names)
        p_torch = predict_video(torch_runner, record.path, names)
        agree += int(p_onnx.probs.argmax() == p_torch.probs.argmax())
        correct += int(p_onnx.probs.argmax() == record.label)
        worst = max(worst, float(np.abs(p_onnx.probs - p_torch.probs).max()))
        # The full-size model's logits run into the hundreds and its probabilities saturate at 0 and 1, where
        # they say little: the clip logits themselves are compared too, relative to their scale.
        logits_onnx, logits_torch = onnx_runner.last, torch_runner.last  # (K, C)
        logit_scale = max(float(np.abs(logits_torch).max()), 1e-12)
        worst_logits = max(worst_logits, float(np.abs(logits_onnx - logits_torch).max()) / logit_scale)
    return len(records), agree, correct, worst, worst_logits


def _extract_and_probe(onnx_model, onnx_path: Path, train_src, test_src, feats: Path, batch: int):
    """fc6 of every video extracted with the ONNX model, then the linear probe: (ExtractSummary, ProbeResult)."""
    from c3dnet.features import ExtractOptions, extract
    from c3dnet.inference.recipe import FeatureRecipe
    from c3dnet.inference.runner import ClipRunner
    from c3dnet.probe import LabelledVideo, gather_features, linear_probe

    summary = extract(train_src.records + test_src.records, ClipRunner(onnx_model, "fc6"), feats,
                      ExtractOptions(FeatureRecipe(stride=8), batch_size=batch, weights=str(onnx_path)),
                      progress=False)
    train_x, train_y, _ = gather_features(feats, [LabelledVideo(str(r.path), r.label, "train")
                                                  for r in train_src.records])
    test_x, test_y, _ = gather_features(feats, [LabelledVideo(str(r.path), r.label, "test")
                                                for r in test_src.records])
    probe, _ = linear_probe(train_x, train_y, test_x, test_y)
    return summary, probe
