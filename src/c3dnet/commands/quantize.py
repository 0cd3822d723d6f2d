"""`c3d quantize --weights W --calib VIDEOS --out DIR`: an int8 OpenVINO model for the CPU, checked against fp32.

    c3d quantize --weights W --calib VIDEOS_OR_LIST... --out DIR [--clips 128] [--holdout 0.25]
                 [--min-agreement 0.99]

Then `--weights DIR` in predict, extract, serve and test runs it (`--precision int8`, or left out).
"""

from __future__ import annotations

import argparse

HELP = "quantize weights to int8 for the CPU (OpenVINO + NNCF), calibrated on your videos, checked against fp32"

EPILOG = """The clips are cut as `c3d test` cuts them (evenly spaced, centre crop, the weights' preprocessing), at most
10 per video. The last --holdout share is held out: on it the int8 model is compared with PyTorch fp32 (top-1
agreement of the logits, cosine of the fc6/fc7 rows, max relative error of every output). Below --min-agreement
nothing is written. DIR gets model.xml, model.bin and c3dnet.json (config, preprocessing, class names, the weights'
SHA-256, the figures); `c3d info DIR` describes it.
example:
  c3d quantize --weights c3d_ucf101.safetensors --calib data/UCF-101/ApplyEyeMakeup --out c3d_int8
  c3d extract --weights c3d_int8 --out feats videos/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--weights", required=True, help="weight file (any format `c3d` loads) or a weight name")
    parser.add_argument("--calib", nargs="+", required=True, metavar="VIDEOS_OR_LIST",
                        help="calibration videos: files, folders or .txt lists, as typical of your data as can be")
    parser.add_argument("--out", required=True, help="output folder (written only once the check passes)")
    parser.add_argument("--clips", type=int, default=128,
                        help="clips sampled in all, calibration and held-out together (default: 128)")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="share of the clips held out for the check against fp32 (default: 0.25)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="least top-1 agreement with fp32 on the held-out clips (default: 0.99)")
    parser.add_argument("--seed", type=int, default=0, help="order in which the videos are sampled (default: 0)")
    parser.add_argument("--no-autorotate", dest="autorotate", action="store_false",
                        help="keep each video's coded orientation (FFmpeg's -noautorotate)")
    parser.add_argument("--float", dest="int8", action="store_false",
                        help="write the model converted but not quantized (no calibration, every clip compared): it "
                             "runs in fp32, or with --precision bf16 in OpenVINO's bf16")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    import json

    from c3dnet.quantize import quantize
    from c3dnet.weights import load_model

    model = load_model(args.weights)
    report = quantize(model, args.calib, args.out, clips=args.clips, holdout=args.holdout,
                      min_agreement=args.min_agreement, seed=args.seed, weights=str(args.weights),
                      autorotate=args.autorotate, int8=args.int8)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    unreadable = f", {report.unreadable_videos} unreadable passed over" if report.unreadable_videos else ""
    what = "int8" if args.int8 else "float"
    calibrated = f"calibrated on {report.calibration_clips} clips" if args.int8 else "checked on clips"
    print(f"wrote {report.path} ({what} OpenVINO IR, {report.size_bytes / 1e6:.1f} MB) in {report.seconds:.0f} s: "
          f"{calibrated} of {report.videos} videos{unreadable}")
    print(f"{what} against PyTorch fp32: {report.accuracy.summary()}")
    return 0
