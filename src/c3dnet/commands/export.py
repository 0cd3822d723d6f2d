"""`c3d export --weights W --out model.onnx`: ONNX with a dynamic batch axis and the weights' metadata."""

from __future__ import annotations

import argparse

HELP = "export weights to ONNX (logits + pool5/fc6/fc7 outputs, metadata embedded), verified against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="weight file (any format `c3d` loads)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default: 17)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="fail when the max abs difference to PyTorch exceeds this (default: 1e-3)")


def run(args: argparse.Namespace) -> int:
    from c3dnet.errors import C3DError
    from c3dnet.export import export_onnx
    from c3dnet.weights import load_model

    model = load_model(args.weights)
    report = export_onnx(model, args.out, opset=args.opset, verify=not args.no_verify,
                         extra_metadata={"weights": str(args.weights)})
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, dynamic batch)")
    if report.max_abs_diff:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in report.max_abs_diff.items())
        print(f"max abs difference ONNX Runtime vs PyTorch ({report.verified_batch} random clips): {diffs}")
        if report.worst_diff > args.tolerance:
            raise C3DError(f"{report.path}: ONNX Runtime differs from PyTorch by {report.worst_diff:.3g} "
                           f"(> --tolerance {args.tolerance}); the export is not faithful: report this with the "
                           "weights' format and your onnxruntime version")
    return 0
