"""Feature-extraction throughput: decode-only vs the whole `extract` pipeline, on videos it generates itself.

    python benchmarks/bench_extract.py                          # tiny model, CPU
    python benchmarks/bench_extract.py --full-size --device cuda --videos 32 --frames 300 --batch-size 64
    python benchmarks/bench_extract.py --xvid benchmarks/xvid --videos 384      # UCF-101's encoding (make_xvid.py)
    python benchmarks/bench_extract.py --full-size --precision fp32,int8 --skip-no-model   # CPU: int8 vs fp32

Prints one table row per measurement: frames/s and clips/s of (a) what one decoder process does alone (decode,
resize, crop, stack into clips: the ceiling set by PyAV per process), (b) the model alone on random clips,
(c) `c3dnet.features.extract` with the model replaced by zeros (decoder processes, batching and writing: the
ceiling of the data side) and (d) `extract` end to end (decoder processes feeding batches that mix videos),
plus the process's peak resident memory.

With --xvid DIR the inputs are UCF-101's own encoding instead (MEncoder XviD with packed B-frames, made by
`benchmarks/make_xvid.py`): `--videos` symlinks cycling over the folder's files, each file's frame count first
checked against FFmpeg's (from the folder's manifest).

--precision takes a comma-separated list (auto, fp32, bf16, int8): the model-only and extract rows are measured
for each, in one run, and a last row gives each one's extract frames/s against the first's. int8 is the OpenVINO
model `c3d quantize` makes (NNCF, here calibrated on 8 random clips: the speed, not the accuracy, is measured).

--crops center,5,10 adds, for each crop setting (`c3d extract --crops`), a decode-only row (one decode, the crops
cut from it) and an extract row with the model-only row's runner (the last one with a list of precisions), then
rows of ratios against the first setting: the extract time measured, and what it would be if only the model's
work grew (one more model-only pass per extra view of each clip).

    python benchmarks/bench_extract.py --crops center,5,10 --skip-no-model --videos 4 --frames 100

--ray 1,2 adds a row per count of worker nodes: `c3d extract --ray` on a local Ray cluster of that many nodes
sharing this machine's cores (`bench_ray.py`), then each one's time against the first plain extract row's.

    python benchmarks/bench_extract.py --full-size --workers 1 --skip-no-model --ray 1,2 --videos 8 --frames 160
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c3dnet.data.decode import video_info
from c3dnet.data.sources import VideoRecord
from c3dnet.device import configure_for, select_device
from c3dnet.features import ClipRunner, ExtractOptions, PendingRows, clip_frames, extract
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D, C3DConfig
from c3dnet.preprocess import Preprocess
from common import environment, markdown_table, write_results  # noqa: E402
from make_xvid import check_counts, load_xvid_set  # noqa: E402
from precisions import backend_for, parse_precisions  # noqa: E402


def _make_one(job: tuple[Path, int, int, int, int, str]) -> Path:
    folder, i, frames, height, width, source = job
    # Random blocks: a codec cannot shrink them to nothing, like real footage.
    rng = np.random.default_rng(i)
    base = rng.integers(0, 256, (frames, height // 16, width // 16, 3), dtype=np.uint8)
    video = np.repeat(np.repeat(base, 16, axis=1), 16, axis=2)
    if source == "jpeg":
        from PIL import Image

        path = folder / f"bench{i:03d}"
        path.mkdir(parents=True)
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(path / f"img_{t + 1:05d}.jpg", quality=90)
        return path
    from c3dnet.data.encode import write_video

    path = folder / f"bench{i:03d}{'.mp4' if source == 'libx264' else '.avi'}"
    write_video(path, video, fps=25.0, codec=source, intra_only=False, quality=4 if source == "mpeg4" else 23)
    return path


def make_videos(folder: Path, count: int, frames: int, height: int, width: int, source: str,
                processes: int = 1) -> list[Path]:
    """Videos (mpeg4 .avi, libx264 .mp4) or JPEG frame folders (img_00001.jpg, ...) of moving random blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder, i, frames, height, width, source) for i in range(count)]
    if processes <= 1:
        return [_make_one(j) for j in jobs]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(processes) as pool:
        return pool.map(_make_one, jobs)


def link_xvid(folder: Path, xvid: Path, count: int) -> tuple[list[Path], list[int]]:
    """`count` symlinks in `folder` cycling over the packed-XviD set in `xvid`, and each one's frame count
    (FFmpeg's, checked against c3dnet's own count of every file in the set first)."""
    files, counts, _ = load_xvid_set(xvid)
    check_counts(files, counts)
    folder.mkdir(parents=True, exist_ok=True)
    paths, frames = [], []
    for i in range(count):
        src = files[i % len(files)].resolve()
        link = folder / f"x{i:05d}_{src.name}"
        link.symlink_to(src)
        paths.append(link)
        frames.append(counts[src.name])
    return paths, frames


def slow_fsync(seconds: float) -> None:
    """Make every os.fsync in this process take `seconds` longer: a disk whose syncs cost milliseconds."""
    import os

    fsync = os.fsync

    def delayed(fd: int) -> None:
        time.sleep(seconds)
        fsync(fd)

    os.fsync = delayed


class NoModel(ClipRunner):
    """Rows of zeros at once: `extract` run with it measures decoding, batching and writing, the model left out."""

    def submit(self, clips: torch.Tensor) -> PendingRows:
        return PendingRows(np.zeros((clips.shape[0], self.dim), dtype=np.float32))


def crop_rows(crop_list: str, runner: ClipRunner, workers: int, paths: list[Path], frame_counts: list[int],
              args: argparse.Namespace, pre: Preprocess, model_cps: float, tmp: Path) -> list[tuple]:
    """The rows of `--crops`: per crop setting, decode-only (1 process) and extract; then the ratios against the
    first setting (extract seconds measured, and predicted from the model-only rate alone)."""
    from c3dnet.inference.clips import CropSet

    rows, seconds = [], {}
    for crops in crop_list.split(","):
        recipe = FeatureRecipe(args.layer, stride=args.stride, crops=crops)
        t0, views = time.perf_counter(), 0
        for p in paths[: args.decode_only_videos]:
            info = video_info(p)
            size = pre.resize_target(info.height, info.width)
            for _, frames in clip_frames(p, pre, args.stride, info.num_frames, size, crops=CropSet(recipe.crops)):
                np.stack(frames)
                views += 1
        dt = time.perf_counter() - t0
        frames = sum(frame_counts[: args.decode_only_videos])
        rows.append((f"crops {crops}: decode+resize+crop+stack only (1 process; clips/s counts views)", frames / dt,
                     views / dt, dt))
        options = ExtractOptions(recipe, batch_size=args.batch_size, workers=workers)
        summary = extract([VideoRecord(p, -1) for p in paths], runner, tmp / f"crops_{crops}", options,
                          progress=False)
        shutil.rmtree(tmp / f"crops_{crops}")
        if summary.failed or summary.frames != sum(frame_counts):
            raise SystemExit(f"--crops {crops}: {len(summary.failed)} videos failed {summary.failed[:3]}")
        seconds[crops] = (summary.seconds, summary.clips)
        rows.append((f"crops {crops}: extract {args.layer}, {workers} decoder processes (clips/s counts clips)",
                     summary.frames_per_s, summary.clips / summary.seconds, summary.seconds))
        print("row:", rows[-1][0], f"{summary.frames_per_s:.0f} frames/s", flush=True)
    first = crop_list.split(",")[0]
    base, clips = seconds[first]
    base_views = FeatureRecipe(crops=first).num_crops
    for crops, (secs, _) in list(seconds.items())[1:]:
        extra = (FeatureRecipe(crops=crops).num_crops - base_views) * clips / model_cps  # the model's extra work
        rows.append((f"crops {crops} / crops {first}: extract seconds measured, and predicted from the extra model "
                     "work alone (ratios)", secs / base, (base + extra) / base, float("nan")))
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--full-size", action="store_true", help="the reference C3D (16x112x112, fc 4096)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200, help="frames per video")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--source", default="mpeg4", choices=("mpeg4", "libx264", "jpeg"),
                        help="video codec of the generated inputs, or JPEG frame folders")
    parser.add_argument("--xvid", type=Path, default=None,
                        help="use this folder's packed-XviD files (benchmarks/make_xvid.py), expanded by symlinks "
                             "to --videos, instead of generating --source videos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="2",
                        help="decoder processes; a comma-separated list runs the extraction once per count")
    parser.add_argument("--gen-processes", type=int, default=1, help="processes that generate the inputs")
    parser.add_argument("--decode-only-videos", type=int, default=16,
                        help="videos timed for the single-process decode-only row")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--layer", default="fc6", choices=("pool5", "fc6", "fc7"))
    parser.add_argument("--precision", default="auto",
                        help="auto, fp32, bf16 or int8, or a comma-separated list of them: rows for each (see above)")
    parser.add_argument("--fp32", dest="precision", action="store_const", const="fp32",
                        help="the same as --precision fp32 (no bf16 autocast on CUDA)")
    parser.add_argument("--crops", default=None, metavar="LIST",
                        help="e.g. center,5,10: rows for each crop setting, against the first (see above)")
    parser.add_argument("--skip-no-model", action="store_true",
                        help="leave out the row that runs the pipeline with the model replaced by zeros")
    parser.add_argument("--ray", default=None, metavar="LIST",
                        help="e.g. 1,2: a row per count of worker nodes of a local Ray cluster (see above)")
    parser.add_argument("--sync-latency-ms", type=float, default=0.0,
                        help="add this much to every fsync, as a network or virtual disk costs (e.g. 10)")
    args = parser.parse_args()
    if args.sync_latency_ms > 0:
        slow_fsync(args.sync_latency_ms / 1000)

    device = configure_for(select_device(args.device))
    if args.full_size:
        config, pre = C3DConfig(num_classes=101), Preprocess()
    else:
        config = C3DConfig(num_classes=101, width_mult=0.125, fc_dim=64, clip_len=16, crop_size=112)
        pre = Preprocess()
    model = C3D(config, preprocess=pre).eval()
    name = "C3D full (78M params)" if args.full_size else "C3D tiny (width x0.125)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if args.xvid is not None:
            paths, frame_counts = link_xvid(tmp / "videos", args.xvid, args.videos)
            unique = len({p.resolve() for p in paths})  # while the links exist
            print(f"# {args.videos} links over the {unique} packed-XviD files of "
                  f"{args.xvid}, {sum(frame_counts)} frames, counts checked against ffprobe's", file=sys.stderr)
        else:
            paths = make_videos(tmp / "videos", args.videos, args.frames, args.height, args.width, args.source,
                                args.gen_processes)
            frame_counts = [args.frames] * len(paths)
            print(f"# generated {args.videos} x {args.frames} frames {args.width}x{args.height} {args.source} in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

        t0 = time.perf_counter()
        clips = 0
        sample = paths[: args.decode_only_videos]
        for p in sample:
            info = video_info(p)
            size = pre.resize_target(info.height, info.width)
            for _, frames in clip_frames(p, pre, args.stride, info.num_frames, size):
                np.stack(frames)  # the clip's one copy, as a decoder process makes it
                clips += 1
        dt = time.perf_counter() - t0
        frames = sum(frame_counts[: len(sample)])
        rows.append((f"decode+resize+crop+stack only (1 process, {len(sample)} videos)", frames / dt, clips / dt, dt))

        counts = [int(w) for w in args.workers.split(",")]
        precisions = parse_precisions(args.precision)
        runs = []
        for precision in precisions:
            runner = ClipRunner(backend_for(model, device, precision), args.layer)
            what = f"{name}, {device}, {runner.backend.precision}" + \
                (f" ({runner.backend.runtime})" if runner.backend.runtime != "pytorch" else "")
            batch = torch.randint(0, 256, (args.batch_size, 3, pre.clip_len, pre.crop_size, pre.crop_size),
                                  dtype=torch.uint8)
            runner(batch)  # cuDNN autotuning and lazy init outside the timing
            t0, n = time.perf_counter(), 0
            while n < 3 or time.perf_counter() - t0 < 2.0:
                runner(batch)  # includes the host -> device copy and the rows' way back, as in extract
                n += 1
            dt = time.perf_counter() - t0
            model_cps = n * args.batch_size / dt
            rows.append((f"model only, random clips ({what})", model_cps * args.stride, model_cps, dt))
            runs += [(runner, w, f"extract {args.layer}, {what}, {w} decoder processes") for w in counts]
        if not args.skip_no_model:
            runs.insert(0, (NoModel(model, args.layer, device), max(counts),
                            f"extract with no model (decode, batch, write), {max(counts)} decoder processes"))
        for run, workers, label in runs:
            options = ExtractOptions(FeatureRecipe(args.layer, stride=args.stride), batch_size=args.batch_size,
                                     workers=workers)
            out = tmp / f"out_{workers}"
            summary = extract([VideoRecord(p, -1) for p in paths], run, out, options, progress=False)
            shutil.rmtree(out)
            if summary.failed or summary.frames != sum(frame_counts):
                raise SystemExit(f"{label}: {len(summary.failed)} videos failed {summary.failed[:3]}, "
                                 f"{summary.frames} frames read where the inputs hold {sum(frame_counts)}")
            rows.append((label, summary.frames_per_s, summary.clips / summary.seconds, summary.seconds))
            print("row:", label, f"{summary.frames_per_s:.0f} frames/s", flush=True)
        if args.ray:  # the same videos, model and recipe as the plain rows
            from bench_ray import ray_rows

            recipe = FeatureRecipe(args.layer, stride=args.stride)
            rows += ray_rows([int(k) for k in args.ray.split(",")], model, recipe, args.batch_size, paths,
                             frame_counts, tmp, device, precisions[-1])
        if args.crops:  # with the runner and model-only rate measured last
            rows += crop_rows(args.crops, runner, max(counts), paths, frame_counts, args, pre, model_cps, tmp)

    if args.xvid is not None:
        what = (f"{args.videos} videos, {sum(frame_counts)} frames (320x240 UCF-101 encoding: MEncoder XviD, packed "
                f"B-frames; symlinks over {unique} files)")
    else:
        what = f"{args.videos} videos x {args.frames} frames ({args.width}x{args.height}, {args.source})"
    setting = f"{what}, stride {args.stride}, batch {args.batch_size}"
    if args.sync_latency_ms:
        setting += f", every fsync {args.sync_latency_ms:g} ms slower"
    table_rows = [[label, fps, cps, secs] for label, fps, cps, secs in rows]
    extracts = [r for r in rows if r[0].startswith("extract ") and not r[0].startswith("extract with no model")]
    if len(precisions) > 1:  # each precision's extraction against the first's, at the same decoder count
        per = len(counts)
        for k, precision in enumerate(precisions[1:], 1):
            for j in range(per):
                a, b = extracts[k * per + j], extracts[j]
                table_rows.append([f"extract {precision} / extract {precisions[0]}, {counts[j]} decoder processes "
                                   "(ratios)", a[1] / b[1], a[2] / b[2], float("nan")])
    for r in [r for r in rows if r[0].startswith("extract --ray")]:  # against the first plain extraction
        table_rows.append([f"{r[0].split(' (')[0]} / {extracts[0][0]} (ratios: frames/s, seconds)",
                           r[1] / extracts[0][1], float("nan"), r[3] / extracts[0][3]])
    extracts = [r for r in extracts if not r[0].startswith("extract --ray")]
    best = max(extracts, key=lambda r: r[1])
    table_rows.append(["best extract / decode-only (1 process), best extract / model-only (frames/s ratios)",
                       best[1] / rows[0][1], best[1] / rows[1][1], float("nan")])
    table = markdown_table(["measurement", "frames/s", "clips/s", "seconds"], table_rows)
    table += (f"\n\npeak RSS {peak_rss_mb():.0f} MB; model-only frames/s = clips/s x stride "
              "(the frames a video advances per clip)")
    data = {"setting": setting, "peak_rss_mb": peak_rss_mb(),
            "rows": [dict(measurement=r[0], frames_per_s=r[1], clips_per_s=r[2], seconds=r[3]) for r in rows]}
    name = f"extract_{device.type}" + ("_xvid" if args.xvid is not None else "")
    name += "" if precisions == ["auto"] else "_" + "_".join(precisions)
    name += "_crops" if args.crops else ""
    name += "_ray" if args.ray else ""
    write_results(name, f"Feature extraction: {setting}", environment(device), table, data,
                  "python benchmarks/bench_extract.py " + " ".join(sys.argv[1:]))

if __name__ == "__main__":
    main()
