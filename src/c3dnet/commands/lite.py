"""`c3d lite`: the whole chain on a tiny scale, as the seed's TIPC lite_train_lite_infer does.

    c3d lite [--work-dir DIR] [--json] [--set section.key=value ...]

synthetic data -> train one epoch -> test (10 clips) -> ONNX export (verified) -> ONNX predict (checked against
PyTorch) -> extract fc6 with ONNX Runtime -> the linear-SVM probe. Every step prints its result; a step whose
output disagrees with the previous one stops the chain with an error. About half a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import time

HELP = "smoke-test the whole chain on tiny synthetic data: synth, train 1 epoch, test, export, ONNX predict/extract"

LITE_OVERRIDES = [
    # A tiny C3D (conv widths 8..64, fc 32, 8 frames of 32x32) on 40x40 synthetic frames: seconds per step.
    "model.width_mult=0.125", "model.fc_dim=32", "model.clip_len=8", "model.crop_size=32", "model.dropout=0.0",
    "preprocess.short_side=36",
    "data.batch_size=4", "data.val_batch_size=4", "data.workers=0",
    "optim.lr=0.01", "optim.warmup_iters=0", "optim.epochs=1",
    "train.progress=false", "train.tensorboard=false", "train.plots=false", "train.checkpoint_every=1000",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default="work_dirs/lite", help="where every step writes (default: "
                                                                      "work_dirs/lite)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training config override on top of the lite settings, e.g. optim.epochs=3")
    parser.add_argument("--json", action="store_true", help="print every step's result as one JSON object at the end")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from c3dnet.data.dataset import ClipDataset
    from c3dnet.data.sources import load_source
    from c3dnet.data.synthetic import SynthParams, generate_synthetic
    from c3dnet.engine.config import load_config
    from c3dnet.engine.device import prepare_model, select_device
    from c3dnet.engine.evaluate import evaluate
    from c3dnet.engine.train import train
    from c3dnet.errors import C3DError
    from c3dnet.export import OnnxC3D, export_onnx
    from c3dnet.features import ClipRunner, ExtractOptions, extract
    from c3dnet.predict import class_labels, predict_video
    from c3dnet.probe import LabelledVideo, gather_features, linear_probe
    from c3dnet.weights import load_model

    work = Path(args.work_dir)
    report: dict[str, dict] = {}
    torch.manual_seed(0)

    def step(n: int, name: str, summary: str, t0: float, **values) -> None:
        report[name] = {**values, "seconds": round(time.perf_counter() - t0, 2)}
        if not args.json:
            print(f"[{n}/6] {name}: {summary} ({report[name]['seconds']:.1f} s)", flush=True)

    t0 = time.perf_counter()
    params = SynthParams(num_pairs=2, videos_per_class=6, groups=3, test_groups=1, frames=25, height=40, width=40)
    data = generate_synthetic(work / "data", params, workers=1)
    train_src, test_src = load_source(data, "train"), load_source(data, "test")
    step(1, "synthetic", f"{len(train_src.records)} train / {len(test_src.records)} test videos, "
         f"{len(test_src.class_names)} classes in {data}", t0, train_videos=len(train_src.records),
         test_videos=len(test_src.records), classes=len(test_src.class_names))

    t0 = time.perf_counter()
    cfg = load_config(None, LITE_OVERRIDES + args.overrides)
    result = train(cfg, data, work_dir=work / "train", device=args.device)
    weights = result.last_path
    top1 = result.last_val.get("top1") if result.last_val else None
    step(2, "train", f"{result.epochs} epoch, {result.iterations} iterations, final loss {result.final_loss:.3f}, "
         f"val top-1 {100 * (top1 or 0):.1f}% -> {weights}", t0, iterations=result.iterations,
         final_loss=result.final_loss, val_top1=top1)

    t0 = time.perf_counter()
    device = select_device(args.device, local_rank=0)  # a plain "cuda" needs its index for set_device
    model = prepare_model(load_model(weights), device).eval()
    loader = torch.utils.data.DataLoader(ClipDataset(test_src.records, "test", model.preprocess, num_clips=10),
                                         batch_size=4, num_workers=0)
    metrics = evaluate(model, loader, device).metrics()
    step(3, "test", f"10-clip top-1 {100 * metrics['top1']:.1f}%, top-5 {100 * metrics['top5']:.1f}%, "
         f"mean class {100 * metrics['mean_class_accuracy']:.1f}% on {metrics['num_videos']} videos", t0, **metrics)

    t0 = time.perf_counter()
    onnx_path = work / "model.onnx"
    # Verified before it is written: a difference beyond the tolerance raises ExportError.
    exported = export_onnx(model.cpu(), onnx_path, extra_metadata={"weights": str(weights)})
    step(4, "export", f"{onnx_path} ({exported.size_bytes / 1e6:.2f} MB), max |diff| / max |PyTorch| "
         f"{exported.worst_rel_diff:.2e}", t0, max_rel_diff=exported.worst_rel_diff,
         max_abs_diff=max(exported.max_abs_diff.values()), path=str(onnx_path))

    t0 = time.perf_counter()
    onnx_model = OnnxC3D(onnx_path)
    names = class_labels(onnx_model.class_names, onnx_model.num_classes)
    torch_runner, onnx_runner = ClipRunner(model, "logits"), ClipRunner(onnx_model, "logits")
    agree, worst, correct = 0, 0.0, 0
    for record in test_src.records:
        p_onnx = predict_video(onnx_runner, record.path, names)
        p_torch = predict_video(torch_runner, record.path, names)
        agree += int(p_onnx.probs.argmax() == p_torch.probs.argmax())
        correct += int(p_onnx.probs.argmax() == record.label)
        worst = max(worst, float(np.abs(p_onnx.probs - p_torch.probs).max()))
    n = len(test_src.records)
    if agree != n or worst > 1e-4:
        raise C3DError(f"{onnx_path}: ONNX predictions differ from PyTorch's ({agree}/{n} top-1 agree, "
                       f"max prob diff {worst:.2e})")
    step(5, "onnx_predict", f"{n} videos, top-1 {100 * correct / n:.1f}%, same top-1 as PyTorch on {agree}/{n}, "
         f"max prob diff {worst:.1e}", t0, videos=n, top1=correct / n, agree=agree, max_prob_diff=worst)

    t0 = time.perf_counter()
    records = train_src.records + test_src.records
    summary = extract(records, ClipRunner(onnx_model, "fc6"), work / "features",
                      ExtractOptions(stride=8, weights=str(onnx_path)), progress=False)
    feats = work / "features"
    train_x, train_y, _ = gather_features(feats, [LabelledVideo(str(r.path), r.label, "train")
                                                  for r in train_src.records])
    test_x, test_y, _ = gather_features(feats, [LabelledVideo(str(r.path), r.label, "test")
                                                for r in test_src.records])
    probe, _ = linear_probe(train_x, train_y, test_x, test_y)
    step(6, "extract_probe", f"fc6 of {summary.done + summary.skipped} videos ({summary.frames_per_s:.0f} frames/s)"
         f", linear SVM top-1 {100 * probe.accuracy:.1f}%", t0, videos=summary.done + summary.skipped,
         frames_per_s=summary.frames_per_s, probe_accuracy=probe.accuracy)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0
