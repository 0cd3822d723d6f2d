"""`c3d train`: train or fine-tune C3D with a YAML recipe; resumable; single process or under torchrun."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "train or fine-tune C3D from a YAML recipe (resumable; DDP under torchrun)"


EPILOG = """recipes by name (--config NAME; the files ship with c3dnet, an existing path wins over a name):
{recipes}
examples:
  c3d train --config seed --data data/UCF-101 --weights c3d_sports1m.safetensors
  c3d train --config seed --data data/UCF-101 --work-dir work_dirs/c3d_ucf101_seed --resume
  c3d train --config seed --data data/UCF-101 --set optim.epochs=20 --set data.batch_size=16
  c3d train --config my_recipe.yaml --data train_list.txt --set data.val_fraction=0.1
  torchrun --nproc_per_node 8 -m c3dnet.cli train --config mmaction --data data/UCF-101
  several nodes: README, "Training on several nodes"
outputs in the work dir: config.yaml (resolved), last.safetensors, best.safetensors, last.state.pt (for --resume),
metrics.jsonl, tensorboard/, curves.png"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from c3dnet.engine.config import RECIPES

    width, file_width = max(map(len, RECIPES)), max(len(r.file) for r in RECIPES.values())
    parser.epilog = EPILOG.format(recipes="\n".join(
        f"  {name:<{width}}  {recipe.file:<{file_width}}  {recipe.about}" for name, recipe in RECIPES.items()))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", default=None, metavar="NAME|PATH",
                        help=f"recipe: a name ({', '.join(RECIPES)}; listed below) or a YAML file "
                             "(default: the seed's recipe)")
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset: UCF-101/HMDB-51 folder, prepared frames, annotation list, class folders")
    parser.add_argument("--weights", type=Path, default=None,
                        help="pretrained weights (any supported format); the head is re-initialised for new classes")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="checkpoints, metrics and plots (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from <work-dir>/last.state.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a work dir that holds an earlier run, deleting that run's files only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=0.01 --set data.batch_size=16")
    parser.add_argument("--split", type=int, default=None, help="official split number (sets data.split)")
    parser.add_argument("--splits", metavar="DIR", default=None,
                        help="folder with the official split files if not inside or beside --data (data.splits_dir)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--workers", default=None, metavar="N|auto",
                        help="loader processes per GPU (sets data.workers; default: the recipe's)")
    parser.add_argument("--skip-bad", action="store_true", help="log and skip unreadable videos (data.skip_bad)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA (train.amp=false)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (train.progress=false)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary of the run at the end")


def run(args: argparse.Namespace) -> int:
    from c3dnet.engine.config import resolve_config
    from c3dnet.engine.train import train

    overrides = list(args.overrides)
    if args.split is not None:
        overrides.append(f"data.split={args.split}")
    if args.splits is not None:
        overrides.append(f"data.splits_dir={args.splits}")
    if args.workers is not None:
        overrides.append(f"data.workers={args.workers}")
    overrides += ["data.skip_bad=true"] * args.skip_bad + ["train.amp=false"] * args.fp32 + \
        ["train.progress=false"] * args.no_progress
    config = resolve_config(args.config) if args.config is not None else None
    work_dir = args.work_dir or Path("work_dirs") / (config.stem if config is not None else "c3d_ucf101_seed")
    result = train(config, args.data, weights=args.weights, work_dir=work_dir, resume=args.resume,
                   device=args.device, overrides=overrides, overwrite=args.overwrite)
    from c3dnet.distinfo import DistInfo

    if DistInfo.from_env().is_main:
        summary = {
            "work_dir": str(result.work_dir),
            "epochs": result.epochs,
            "iterations": result.iterations,
            "final_loss": result.final_loss,
            "best_val_top1": result.best_top1,
            "best_epoch": result.best_epoch,
            "last": str(result.last_path),
            "best": str(result.best_path) if result.best_path.is_file() else None,
        }
        if args.json:
            print(json.dumps(summary))
        else:
            best = f", best validation top-1 {100 * result.best_top1:.2f}% (epoch {result.best_epoch})" \
                if result.best_top1 is not None else ""
            print(f"trained {result.epochs} epochs ({result.iterations} iterations), last epoch's mean loss "
                  f"{result.final_loss:.4f}{best}; weights: {result.last_path}")
    return 0
