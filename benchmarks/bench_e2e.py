"""End-to-end throughput: training epochs and 10-clip testing with data loading, from videos and from frames.

Generates a dataset shaped like UCF-101 (320x240 MPEG-4 Part 2 `.avi`, ~190 frames, inter-coded like XviD,
in the official layout with split lists), extracts it to JPEG frame folders with `c3d prepare` (short side
128), then runs c3dnet's own training loop (`c3dnet.engine.train`) and test path (`engine.testing.test_weights`)
over both, and prints clips/s, decoded frames/s and the fraction of time the model waited for data.

With --train-videos/--test-videos (on CUDA by default UCF-101 split 1's 9537 and 3783) the measured runs use
UCF-101-sized copies of both datasets made of symlinks that cycle over the unique videos, so a training epoch and
the test set are full-sized without generating 13k videos; the table then also says how long UCF-101 split 1
takes at the measured rates.

With --xvid DIR the videos are UCF-101's own encoding instead of generated MPEG-4: the packed-XviD files that
`benchmarks/make_xvid.py` made (MEncoder, B-frames), linked into the same layout (by default 4 per class on
CUDA), and every prepared frame count is checked against FFmpeg's.

Usage:
    python benchmarks/bench_e2e.py                         # CPU: a reduced model and a small set
    python benchmarks/bench_e2e.py --xvid benchmarks/xvid  # UCF-101's encoding (run make_xvid.py first)
    python benchmarks/bench_e2e.py --device cuda --videos 1200 --workers 14 --train-batch 128
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c3dnet.data.dataset import ClipDataset, worker_init_fn  # noqa: E402
from c3dnet.data.encode import write_video  # noqa: E402
from c3dnet.data.sources import Source, load_source  # noqa: E402
from c3dnet.device import configure_for, prepare_model, select_device  # noqa: E402
from c3dnet.engine.config import load_config  # noqa: E402
from c3dnet.engine.testing import TestOptions, test_weights  # noqa: E402
from c3dnet.engine.train import train  # noqa: E402
from c3dnet.forks import loader_context  # noqa: E402
from common import environment, markdown_table, write_results  # noqa: E402
from make_xvid import check_counts, load_xvid_set  # noqa: E402

UCF_TRAIN, UCF_TEST = 9537, 3783  # videos in UCF-101 split 1's train and test lists


def _video(args: tuple[Path, int, int, int, int]) -> None:
    path, seed, frames, height, width = args
    rng = np.random.default_rng(seed)
    # A blocky textured background panning across the frame and a bright square moving over it: cheap to
    # draw, and inter-coded content that an MPEG-4 encoder has to work for, like real footage.
    tex = rng.integers(0, 256, (height // 8 + frames, width // 8 + frames, 3), dtype=np.uint8)
    tex = tex.repeat(8, 0).repeat(8, 1)
    out = np.empty((frames, height, width, 3), np.uint8)
    vy, vx = rng.integers(-2, 3, 2)
    for t in range(frames):
        oy, ox = (t * vy) % (tex.shape[0] - height), (t * vx) % (tex.shape[1] - width)
        out[t] = tex[oy: oy + height, ox: ox + width]
        y, x = (20 + 2 * t) % (height - 40), (30 + 3 * t) % (width - 40)
        out[t, y: y + 40, x: x + 40] = 255
    write_video(path, out, fps=25.0, codec="mpeg4", quality=4, intra_only=False)


def make_ucf_like(root: Path, videos: int, classes: int, frames: int, workers: int,
                  xvid: list[Path] | None = None) -> Path:
    """A UCF-101-layout folder: <Class>/v_<Class>_gXX_cYY.avi + ucfTrainTestlist/ (every third group tests).

    The videos are generated MPEG-4, or with `xvid` symlinks cycling over those files."""
    data = root / "UCF-101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    names = [f"Action{i:03d}" for i in range(classes)]
    jobs, train_lines, test_lines = [], [], []
    for v in range(videos):
        c = v % classes
        group, clip = 1 + (v // classes) % 25, 1 + v // (classes * 25)
        rel = f"{names[c]}/v_{names[c]}_g{group:02d}_c{clip:02d}.avi"
        (data / names[c]).mkdir(parents=True, exist_ok=True)
        jobs.append((data / rel, v, frames, 240, 320))
        (test_lines if group % 3 == 0 else train_lines).append(rel)
    if xvid:
        for i, (path, *_) in enumerate(jobs):
            path.symlink_to(xvid[i % len(xvid)].resolve())
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_video, jobs, chunksize=4)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (lists / "trainlist01.txt").write_text("".join(f"{r} {names.index(r.split('/')[0]) + 1}\n" for r in train_lines))
    (lists / "testlist01.txt").write_text("".join(f"{r}\n" for r in test_lines))
    return data


def expand(root: Path, ucf: Path, frames_root: Path, train_videos: int,
           test_videos: int) -> tuple[Path, Path, dict[str, tuple[int, int]]]:
    """UCF-101-sized copies of the generated set, made of symlinks to its videos and their prepared frames.

    Each subset gets `train_videos` / `test_videos` entries (0: one per unique video) cycling over the unique
    videos of that subset in `c3d prepare`'s split-1 lists, each entry in its target's class:
        root/big/UCF-101/<Class>/v_<Class>_gGG_cCC.avi -> ucf/<Class>/<stem>.avi
        root/big/ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt (beside the folder, where load_source looks)
        root/big/frames/{classes,train_split1,test_split1}.txt, frames/<Class>/<name> -> the prepared frame folder
    As in UCF-101's split 1, test entries take groups g01-g07 and train entries g08-g25. Returns the video folder,
    the frames folder and, per subset, (entries, unique videos), checked against what `load_source` reads.
    """
    big = root / "big"
    shutil.rmtree(big, ignore_errors=True)
    videos, lists, frames = big / "UCF-101", big / "ucfTrainTestlist", big / "frames"
    ucf, frames_root = ucf.resolve(), frames_root.resolve()
    classes = (frames_root / "classes.txt").read_text().split()
    for cls in classes:
        (videos / cls).mkdir(parents=True)
        (frames / "frames" / cls).mkdir(parents=True)
    lists.mkdir()
    shutil.copyfile(frames_root / "classes.txt", frames / "classes.txt")
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(classes)))
    sizes = {}
    for subset, count, groups in (("train", train_videos, range(8, 26)), ("test", test_videos, range(1, 8))):
        unique = [line.split() for line in (frames_root / f"{subset}_split1.txt").read_text().splitlines()]
        seen: Counter[str] = Counter()
        ucf_lines, frame_lines = [], []
        for i in range(count or len(unique)):
            rel, num, label = unique[i % len(unique)]
            _, cls, stem = rel.split("/")
            k = seen[cls]
            seen[cls] += 1
            name = f"v_{cls}_g{groups[k % len(groups)]:02d}_c{1 + k // len(groups):02d}"
            (videos / cls / f"{name}.avi").symlink_to(ucf / cls / f"{stem}.avi")
            (frames / "frames" / cls / name).symlink_to(frames_root / rel)
            ucf_lines.append(f"{cls}/{name}.avi" + (f" {int(label) + 1}" if subset == "train" else "") + "\n")
            frame_lines.append(f"frames/{cls}/{name} {num} {label}\n")
        (lists / f"{subset}list01.txt").write_text("".join(ucf_lines))
        (frames / f"{subset}_split1.txt").write_text("".join(frame_lines))
        sizes[subset] = (len(frame_lines), len(unique))
    for path in (videos, frames):
        for subset, (n, _) in sizes.items():
            got = len(load_source(path, subset).records)
            if got != n:
                raise SystemExit(f"{path}: load_source read {got} {subset} videos, expected {n}")
    return videos, frames, sizes


def check_prepared(ucf: Path, frames_root: Path, counts: dict[str, int]) -> None:
    """Every video `c3d prepare` listed has the frame count FFmpeg gives the file its symlink points to."""
    bad, seen = [], 0
    for subset in ("train", "test"):
        for line in (frames_root / f"{subset}_split1.txt").read_text().splitlines():
            rel, num, _ = line.split()
            _, cls, stem = rel.split("/")
            target = (ucf / cls / f"{stem}.avi").resolve().name
            seen += 1
            if int(num) != counts[target]:
                bad.append(f"{rel} ({target}): {num} frames, ffprobe {counts[target]}")
    if bad or not seen:
        raise SystemExit(f"c3d prepare: {len(bad)} of {seen} videos differ from FFmpeg's frame count: {bad[:5]}")


def bench_test(model, source: Source, device, clips: int, batch: int, workers: int) -> dict[str, float]:
    """The 10-clip test through the library's entry point (`c3dnet.engine.testing.test_weights`), as `c3d test`."""
    options = TestOptions(clips=clips, batch_size=batch, workers=workers, device=str(device))
    # Warm-up on one batch: CUDA context, cuDNN algorithm search.
    test_weights(model, replace(source, records=source.records[:batch]), replace(options, workers=min(workers, 4)))
    run = test_weights(model, source, options)
    n, seconds = run.result.num_videos, run.seconds
    return {"videos": n, "seconds": seconds, "videos_per_s": n / seconds, "clips_per_s": n * clips / seconds,
            "frames_per_s": n * clips * model.config.clip_len / seconds, "data_wait": run.data_wait,
            "top1": run.result.top1}


def bench_loader(records, preprocess, batch: int, workers: int, pin: bool) -> dict[str, float]:
    """The training loader alone (decode, random crop and flip, collate; no model): its clips/s ceiling."""
    dataset = ClipDataset(records, "train", preprocess, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         worker_init_fn=worker_init_fn, pin_memory=pin, drop_last=True,
                                         multiprocessing_context=loader_context(workers))
    it = iter(loader)
    next(it)  # worker start-up outside the timing
    start, clips = time.perf_counter(), 0
    for clips_batch, _, _ in it:
        clips += clips_batch.shape[0]
    seconds = time.perf_counter() - start
    return {"clips_per_s": clips / seconds, "frames_per_s": clips * preprocess.clip_len / seconds,
            "seconds": seconds}


def bench_train(data: Path, work: Path, device: str, overrides: list[str], epochs: int) -> dict[str, float]:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "c3d_ucf101_seed.yaml", overrides + [
        f"optim.epochs={epochs}", "optim.warmup_iters=0", "train.val_every=0", "train.checkpoint_every=0",
        "train.plots=false", "train.tensorboard=false", "train.progress=false", "train.log_every=1"])
    start = time.perf_counter()
    result = train(cfg, data, work_dir=work, device=device)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "train" and r["epoch"] > 1] or \
        [r for r in records if r.get("kind") == "train"]
    clips = cfg.data.batch_size * len(steps)
    step_time = sum(cfg.data.batch_size / r["clips_per_s"] for r in steps)
    wait = sum(r["data_wait"] * cfg.data.batch_size / r["clips_per_s"] for r in steps)
    return {"iterations": result.iterations, "seconds_total": seconds, "clips_per_s": clips / step_time,
            "frames_per_s": clips * cfg.model.clip_len / step_time, "data_wait": wait / step_time,
            "clips_per_s_incl_startup": result.iterations * cfg.data.batch_size / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--videos", type=int, default=None, help="videos to generate (default 1200 on CUDA, 60 on CPU)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=190)
    ap.add_argument("--workers", type=int, default=None, help="loader and generation processes")
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--test-batch", type=int, default=None,
                    help="videos per test batch (x10 clips; default 16 on CUDA, 2 on CPU)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs per source, the first is warm-up (default 2 when expanding, else 3)")
    ap.add_argument("--train-videos", type=int, default=None,
                    help="train entries of the measured set, cycling over the generated train videos "
                         "(default 9537 on CUDA, UCF-101 split 1; 0 on CPU: the generated set as is)")
    ap.add_argument("--test-videos", type=int, default=None,
                    help="test entries likewise (default 3783 on CUDA; 0 on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training model")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated data in this folder")
    ap.add_argument("--skip-video", action="store_true", help="only the JPEG frame path")
    ap.add_argument("--video-first", action="store_true",
                    help="each stage over the videos before the frames (a time limit then cuts a frames row)")
    ap.add_argument("--xvid", type=Path, default=None,
                    help="link this folder's packed-XviD files (benchmarks/make_xvid.py: UCF-101's encoding) "
                         "instead of generating MPEG-4 videos; --videos then defaults to 4 per class on CUDA")
    args = ap.parse_args(argv)

    device = configure_for(select_device(args.device))
    gpu = device.type == "cuda"
    xvid_files, xvid_counts = None, {}
    if args.xvid is not None:
        xvid_files, xvid_counts, _ = load_xvid_set(args.xvid)
        check_counts(xvid_files, xvid_counts)
    videos = args.videos or ((4 * args.classes if xvid_files else 1200) if gpu else 60)
    workers = args.workers if args.workers is not None else max(1, min(14, mp.cpu_count() - 2))
    train_batch = args.train_batch or (128 if gpu else 4)
    test_batch = args.test_batch or (16 if gpu else 2)
    train_videos = args.train_videos if args.train_videos is not None else (UCF_TRAIN if gpu else 0)
    test_videos = args.test_videos if args.test_videos is not None else (UCF_TEST if gpu else 0)
    expanded = train_videos > 0 or test_videos > 0
    epochs = args.epochs or (2 if expanded else 3)
    model_set = [] if gpu else ["model.width_mult=0.25", "model.fc_dim=512", "model.crop_size=56",
                                "preprocess.short_side=64"]
    overrides = model_set + [f"data.batch_size={train_batch}", f"data.workers={workers}",
                             f"train.compile={str(args.compile).lower()}"]
    root = args.keep or Path(tempfile.mkdtemp(prefix="c3dnet-bench-"))
    rows, data = [], {"videos": videos, "frames_per_video": args.frames, "train_videos": train_videos,
                      "test_videos": test_videos, "rows": []}
    headers = ["stage", "clips/s", "clip frames/s", "data wait", "seconds", "note"]

    def add(name: str, r: dict[str, float]) -> None:
        rows.append([name, r.get("clips_per_s", float("nan")), r.get("frames_per_s", float("nan")),
                     r.get("data_wait", float("nan")), r.get("seconds", r.get("seconds_total", float("nan"))),
                     r.get("note", "")])
        data["rows"].append({"name": name, **r})
        print(name, json.dumps(r), flush=True)
        print("row:", markdown_table(headers, rows[-1:]).splitlines()[-1], flush=True)

    try:
        start = time.perf_counter()
        ucf = make_ucf_like(root, videos, args.classes, args.frames, workers, xvid_files)
        gen = time.perf_counter() - start
        if xvid_files:
            total_frames = sum(xvid_counts[xvid_files[i % len(xvid_files)].name] for i in range(videos))
            add("link packed-XviD .avi (UCF-101's encoding)",
                {"seconds": gen, "note": f"{videos} videos, {total_frames} frames, symlinks over {len(xvid_files)} "
                                         f"MEncoder XviD files with packed B-frames ({args.xvid})"})
        else:
            total_frames = videos * args.frames
            add("generate .avi (encode)", {"seconds": gen, "frames_per_s": total_frames / gen,
                                           "note": f"{videos} videos 320x240, {workers} processes"})
        from c3dnet.cli import main as c3d

        frames_root = root / "frames"
        start = time.perf_counter()
        if c3d(["prepare", "--data", str(ucf), "--out", str(frames_root), "--workers", str(workers),
                "--short-side", "128", "--split", "1"]) != 0:
            raise SystemExit("c3d prepare failed")
        prep = time.perf_counter() - start
        note = f"{workers} processes"
        if xvid_files:
            check_prepared(ucf, frames_root, xvid_counts)
            note += ", every video's frame count equal to ffprobe's"
        add("c3d prepare (decode + resize + JPEG)", {"seconds": prep, "frames_per_s": total_frames / prep,
                                                     "note": note})

        frames_set, video_set, sizes = frames_root, ucf, {}
        if expanded:
            start = time.perf_counter()
            video_set, frames_set, sizes = expand(root, ucf, frames_root, train_videos, test_videos)
            (n_train, u_train), (n_test, u_test) = sizes["train"], sizes["test"]
            add("expand by symlinks", {"seconds": time.perf_counter() - start,
                                       "note": f"{n_train} train + {n_test} test videos over {u_train} + {u_test} "
                                               "unique ones, as .avi and as frame folders"})
        sources = [("JPEG frames 171x128", frames_set)] + ([] if args.skip_video else [("video .avi", video_set)])
        if args.video_first:
            sources.reverse()
        size_note = {s: f", {n} videos ({u} unique)" for s, (n, u) in sizes.items()}
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "c3d_ucf101_seed.yaml", model_set)
        for label, path in sources:
            r = bench_loader(load_source(path, "train").records, cfg.preprocess_record(), train_batch, workers, gpu)
            r["note"] = f"batch {train_batch}, {workers} workers, no model{size_note.get('train', '')}"
            add(f"train loader only, {label}", r)
        train_rates = {}
        for label, path in sources:
            r = bench_train(path, root / f"work_{label.split()[0]}", args.device, overrides, epochs)
            r["note"] = f"batch {train_batch}, {workers} workers, epochs 2..{epochs}{size_note.get('train', '')}"
            add(f"train, {label}", r)
            train_rates[label] = r["clips_per_s"]
        from c3dnet.model import C3D

        source_classes = load_source(frames_root, "test").class_names
        model = prepare_model(C3D(cfg.model_config(len(source_classes)), cfg.preprocess_record()), device).eval()
        test_rates = {}
        for label, path in sources:
            r = bench_test(model, load_source(path, "test"), device, 10, test_batch, workers)
            unique = f" ({sizes['test'][1]} unique)" if sizes else ""
            r["note"] = (f"{r['videos']} videos{unique} x 10 clips, {r['videos_per_s']:.0f} videos/s, "
                         f"batch {test_batch} videos")
            add(f"10-clip test, {label}", r)
            test_rates[label] = r["clips_per_s"]
        if gpu or expanded:
            for label, _ in sources:
                train_s, test_s = UCF_TRAIN / train_rates[label], UCF_TEST * 10 / test_rates[label]
                add(f"UCF-101 split 1 at these rates, {label}",
                    {"seconds": train_s + test_s, "train_epoch_seconds": train_s, "test_seconds": test_s,
                     "note": f"computed from the train and test clips/s above, not timed: training epoch of "
                             f"{UCF_TRAIN} clips {train_s:.0f} s + 10-clip test of {UCF_TEST} videos {test_s:.0f} s"})
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    size = "reference C3D" if gpu else "reduced C3D (width 1/4, 56x56 crops)"
    table = markdown_table(headers, rows)
    kind = "UCF-101-shaped data" + (", UCF-101's encoding (packed XviD)" if xvid_files else "")
    write_results(f"e2e_{device.type}" + ("_xvid" if xvid_files else ""), f"End to end, {size}, {kind}",
                  environment(device), table, data,
                  "python benchmarks/bench_e2e.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
