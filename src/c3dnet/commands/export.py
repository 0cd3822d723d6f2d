"""`c3d export --weights W --out model.onnx`: ONNX with a dynamic batch axis and the weights' metadata."""

from __future__ import annotations

import argparse

HELP = "export weights to ONNX (logits + pool5/fc6/fc7 outputs, metadata embedded), verified against PyTorch"

DEFAULT_TOLERANCE = 1e-4
"""`c3dnet.export.DEFAULT_TOLERANCE`, spelt out here so that `c3d --help` does not import torch (a test keeps them
equal)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="weight file (any format `c3d` loads)")
    parser.add_argument("--out", required=True, help="output .onnx file (written only once verified)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default: 17)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="fail, writing nothing, when any output's max |ONNX - PyTorch| / max |PyTorch| on "
                             f"the check's clips exceeds this relative difference (default: {DEFAULT_TOLERANCE:g})")


def run(args: argparse.Namespace) -> int:
    from c3dnet.errors import ConfigError
    from c3dnet.export import export_onnx
    from c3dnet.weights import load_model

    if args.opset < 17:
        raise ConfigError(f"--opset {args.opset}: C3D's graph needs opset 17 or later (max_pool3d with ceil mode "
                          "and dynamic shapes); pass --opset 17")
    if not args.tolerance > 0:
        raise ConfigError(f"--tolerance {args.tolerance}: must be > 0, a relative difference such as 1e-4")
    model = load_model(args.weights)
    report = export_onnx(model, args.out, opset=args.opset, verify=not args.no_verify, tolerance=args.tolerance,
                         extra_metadata={"weights": str(args.weights)})
    extra = f" + weights {report.external_data.name}" if report.external_data else ""
    print(f"wrote {report.path}{extra} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, dynamic batch)")
    if report.diffs:
        diffs = ", ".join(f"{k} {d.rel_diff:.2e}" for k, d in report.diffs.items())
        print(f"ONNX Runtime vs PyTorch on {report.verified_batch} clips, max |difference| / max |PyTorch|: {diffs} "
              f"(tolerance {report.tolerance:g})")
    return 0
