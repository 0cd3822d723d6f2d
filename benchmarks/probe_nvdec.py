"""Probe: is GPU decoding usable here, for which codecs, how fast, and does it give the CPU path's frames?

    python benchmarks/probe_nvdec.py --xvid benchmarks/xvid       # on the GPU machine (gpu.sh's nvdec step)

Video, through NVIDIA's NVDEC engines with PyNvVideoCodec (a wheel carried in .whl/, see prepare_gpu_run.sh):
- whether PyNvVideoCodec imports (it needs the driver's libnvcuvid/libnvidia-encode) and what the decoder
  capabilities say for each codec (`GetDecoderCaps`: engines, maximum size);
- per kind of file, from the folder `benchmarks/make_xvid.py` made: UCF-101's MEncoder XviD with packed
  B-frames (MPEG-4 Part 2 ASP, as is), the same files unpacked (one VOP per AVI chunk, same frames) and as H.264:
  the frames NVDEC gives against FFmpeg's count (the manifest's ffprobe count) and c3dnet's, and frame accuracy
  against the CPU path: the luma plane against PyAV's decoding (max and mean absolute difference; a conformant
  MPEG-4 ASP decoder may differ by IDCT rounding, H.264 must match exactly), and NVDEC's RGB output against
  `c3dnet.data.decode.iter_frames` (FFmpeg's swscale conversion; the colour conversions differ slightly);
- decoding rate, frames/s, of one decoder and of several at once (threads, each with its own demuxer and
  decoder per file, as a data loader would open each video; and 7 processes, one per NVDEC engine of an H200),
  NV12 output in GPU memory, and RGB output; beside it the CPU path's rate in one process (PyAV, every frame to
  RGB), to weigh against the machine's cores.
JPEG: batched GPU decoding (`torchvision.io.decode_jpeg` on CUDA, file reading included, as bench_decode.py's
row) against OpenCV in `--jpeg-processes` CPU processes (default: every core), on JPEG frames made from the
XviD files at 320x240 and at 171x128 (what `c3d prepare` writes).

Without CUDA or PyNvVideoCodec it says so in one line each, and still prints the CPU rows; it exits 0 either way,
and every failure of a GPU row is reported in its row, not raised, so one run shows everything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, write_results  # noqa: E402
from make_xvid import DEFAULT_DIR, load_xvid_set  # noqa: E402

HEADERS = ["measurement", "frames/s", "frames", "max abs diff", "mean abs diff", "note"]


def load_nvc() -> tuple[object | None, str]:
    """PyNvVideoCodec, or None and why not (not installed, no driver library, no CUDA)."""
    if not torch.cuda.is_available():
        import importlib.util

        there = "installed" if importlib.util.find_spec("PyNvVideoCodec") else "not installed"
        return None, (f"no CUDA device (torch.cuda.is_available() is False), PyNvVideoCodec {there}: "
                      "the NVDEC and GPU JPEG rows are skipped")
    libs = driver_video_libraries()
    try:
        import PyNvVideoCodec as nvc
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError when the driver lacks the video libraries
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"no PyNvVideoCodec ({type(e).__name__}: {first[:300]}; {libs}): the NVDEC rows are skipped"
    return nvc, f"PyNvVideoCodec {getattr(nvc, '__version__', '?')} imported ({libs})"


def driver_video_libraries() -> str:
    """Whether the driver's decode and encode libraries load (a container without the driver's `video`
    capability lacks them, and PyNvVideoCodec cannot work there)."""
    import ctypes

    found = []
    for lib in ("libnvcuvid.so.1", "libnvidia-encode.so.1"):
        try:
            ctypes.CDLL(lib)
            found.append(f"{lib} loads")
        except OSError:
            found.append(f"{lib} missing")
    return ", ".join(found)


def cpu_luma(path: Path) -> np.ndarray:
    """(T, H, W) uint8: the Y plane of every frame as PyAV (FFmpeg's decoder) gives it, in display order."""
    import av

    planes = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = frame.reformat(format="yuv420p")
            p = frame.planes[0]
            planes.append(np.frombuffer(p, np.uint8).reshape(frame.height, p.line_size)[:, : frame.width].copy())
    return np.stack(planes)


def cpu_rgb(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8: c3dnet's own decoding (the CPU path the data pipeline uses), full size."""
    from c3dnet.data.decode import iter_frames

    return np.concatenate(list(iter_frames(path)))


def frame_tensor(frame, width: int) -> torch.Tensor:
    """A decoded frame as a CUDA uint8 tensor without a copy: NV12 as (H*3/2, W), RGB as (H, W, 3)."""
    try:
        t = torch.from_dlpack(frame)
    except Exception:  # noqa: BLE001 - older bindings: the planes' __cuda_array_interface__
        t = torch.as_tensor(frame.cuda()[0], device="cuda")
    return t if t.ndim > 1 else t.reshape(-1, width)


def nvdec_frames(nvc, path: Path, rgb: bool, on_frame: Callable[[int, torch.Tensor], None] | None = None,
                 width: int = 320) -> int:
    """Decode every frame of `path` on the GPU; `on_frame(i, tensor)` sees each frame before the next decode
    may reuse its surface. Returns the number of frames."""
    dmx = nvc.CreateDemuxer(filename=str(path))
    kwargs = dict(gpuid=0, codec=dmx.GetNvCodecId(), usedevicememory=True)
    if rgb:
        kwargs["outputColorType"] = nvc.OutputColorType.RGB
    dec = nvc.CreateDecoder(**kwargs)
    n = 0
    for packet in dmx:
        for frame in dec.Decode(packet):
            if on_frame is not None:
                on_frame(n, frame_tensor(frame, width))
            n += 1
    # An empty packet flushes the frames the decoder still holds (the demuxer's last one may not be empty).
    flush = nvc.PacketData() if hasattr(nvc, "PacketData") else None
    if flush is not None:
        try:
            for frame in dec.Decode(flush):
                if on_frame is not None:
                    on_frame(n, frame_tensor(frame, width))
                n += 1
        except Exception:  # noqa: BLE001 - a binding that flushes at the end of the demuxer by itself
            pass
    return n


def decoder_caps(nvc, path: Path) -> str:
    try:
        dmx = nvc.CreateDemuxer(filename=str(path))
        caps = nvc.GetDecoderCaps(gpuid=0, codec=dmx.GetNvCodecId(), chromaformat=dmx.ChromaFormat(),
                                  bitdepth=dmx.BitDepth())
        keep = {k: caps[k] for k in ("supported", "num_decoder_engines", "max_width", "max_height") if k in caps}
        return f"codec {dmx.GetNvCodecId()}, caps {keep or caps}"
    except Exception as e:  # noqa: BLE001
        return f"caps failed: {type(e).__name__}: {e}"[:300]


def accuracy(nvc, path: Path, want_frames: int) -> dict:
    """NVDEC's frame count, and its luma and RGB against the CPU path's, over the frames both give."""
    out: dict = {"ffprobe_frames": want_frames}
    luma = torch.from_numpy(cpu_luma(path)).cuda()
    out["pyav_frames"] = int(luma.shape[0])
    h, w = luma.shape[1:]
    diffs: list[tuple[int, float, int]] = []  # (max, sum, pixels) per compared frame

    def on_luma(i: int, t: torch.Tensor) -> None:
        if i < luma.shape[0]:
            d = (t[:h, :w].to(torch.int16) - luma[i].to(torch.int16)).abs()
            diffs.append((int(d.max()), float(d.sum()), d.numel()))

    out["nvdec_frames"] = nvdec_frames(nvc, path, rgb=False, on_frame=on_luma, width=w)
    out["luma_max"] = max(d[0] for d in diffs) if diffs else float("nan")
    out["luma_mean"] = sum(d[1] for d in diffs) / max(1, sum(d[2] for d in diffs))
    out["luma_frames_exact"] = sum(1 for d in diffs if d[0] == 0)
    rgb = torch.from_numpy(cpu_rgb(path)).cuda()
    out["c3dnet_frames"] = int(rgb.shape[0])
    rdiffs: list[tuple[int, float, int]] = []

    def on_rgb(i: int, t: torch.Tensor) -> None:
        if i < rgb.shape[0]:
            if t.shape[0] == 3 and t.ndim == 3:  # planar RGB: to interleaved
                t = t.permute(1, 2, 0)
            d = (t[:h, :w].reshape(h, w, 3).to(torch.int16) - rgb[i].to(torch.int16)).abs()
            rdiffs.append((int(d.max()), float(d.sum()), d.numel()))

    out["nvdec_rgb_frames"] = nvdec_frames(nvc, path, rgb=True, on_frame=on_rgb, width=w)
    out["rgb_max"] = max(d[0] for d in rdiffs) if rdiffs else float("nan")
    out["rgb_mean"] = sum(d[1] for d in rdiffs) / max(1, sum(d[2] for d in rdiffs))
    return out


def nvdec_rate(nvc, files: list[Path], decoders: int, seconds: float, rgb: bool) -> tuple[float, int]:
    """Frames/s of `decoders` threads, each decoding the files in turn (its own demuxer and decoder per file)
    until `seconds` have passed, started together."""
    counts = [0] * decoders
    errors: list[str] = []
    go = threading.Barrier(decoders + 1)
    stop = time.perf_counter() + 1e9

    def work(k: int) -> None:
        go.wait()
        i = k
        try:
            while time.perf_counter() < stop:
                counts[k] += nvdec_frames(nvc, files[i % len(files)], rgb)
                i += 1
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")

    if hasattr(nvc, "PyNvDecoder") and hasattr(nvc.PyNvDecoder, "SetSessionCount"):
        nvc.PyNvDecoder.SetSessionCount(decoders)
    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(decoders)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop = start + seconds
    go.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / elapsed, sum(counts)


def _rate_child(paths: list[str], seconds: float, rgb: bool, barrier, queue) -> None:
    try:
        import PyNvVideoCodec as nvc

        files = [Path(p) for p in paths]
        nvdec_frames(nvc, files[0], rgb)  # CUDA context and decoder start-up outside the timing
        barrier.wait()
        n, i, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            n += nvdec_frames(nvc, files[i % len(files)], rgb)
            i += 1
        queue.put((n, time.perf_counter() - start, ""))
    except Exception as e:  # noqa: BLE001
        queue.put((0, 0.0, f"{type(e).__name__}: {e}"))


def nvdec_rate_processes(files: list[Path], decoders: int, seconds: float, rgb: bool) -> tuple[float, int]:
    """Frames/s of `decoders` processes (spawned: each its own CUDA context and decoders), started together;
    against the threads' row it shows whether the binding's calls hold Python's GIL."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(decoders), ctx.Queue()
    procs = [ctx.Process(target=_rate_child, args=([str(f) for f in files[k:] + files[:k]], seconds, rgb, barrier,
                                                   queue), daemon=True) for k in range(decoders)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=seconds + 90) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [r[2] for r in results if r[2]]
    if errors:
        raise RuntimeError(errors[0])
    frames = sum(r[0] for r in results)
    return frames / max(r[1] for r in results), frames


def cpu_rate(path: Path, seconds: float) -> tuple[float, int]:
    """The CPU path in this process: c3dnet's decoding, every frame to RGB at full size."""
    from c3dnet.data.decode import iter_frames

    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        n += sum(len(c) for c in iter_frames(path))
    return n / (time.perf_counter() - start), n


def _decode_jpegs(files: list[str]) -> int:
    import cv2

    cv2.setNumThreads(1)
    for f in files:
        img = cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR)
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return len(files)


def jpeg_rows(videos: list[Path], processes: int, passes: int, rows: list, data: dict, gpu: bool) -> None:
    """JPEG frames of `videos` at 320x240 and 171x128 (quality 95, as c3d prepare): OpenCV in `processes` CPU
    processes against torchvision's batched decode_jpeg on the GPU."""
    import cv2

    from c3dnet.data.resize import resize_image

    with tempfile.TemporaryDirectory() as tmp:
        folders = {"320x240": Path(tmp) / "full", "171x128": Path(tmp) / "small"}
        for f in folders.values():
            f.mkdir()
        i = 0
        for v in videos:
            for frame in cpu_rgb(v):
                for size, f in folders.items():
                    img = frame if size == "320x240" else resize_image(frame, (128, 171))
                    cv2.imwrite(str(f / f"img_{i + 1:05d}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                i += 1
        for size, folder in folders.items():
            files = [str(p) for p in sorted(folder.glob("*.jpg"))] * passes
            chunks = [files[k::processes] for k in range(processes)]
            with mp.get_context("fork").Pool(processes) as pool:
                pool.map(_decode_jpegs, [c[:8] for c in chunks])  # start-up and imports outside the timing
                start = time.perf_counter()
                n = sum(pool.map(_decode_jpegs, chunks))
                fps = n / (time.perf_counter() - start)
            add(rows, data, f"JPEG {size} -> RGB, OpenCV, {processes} CPU processes", fps, n,
                note=f"{len(files) // passes} files x {passes} passes, file reading included")
            if not gpu:
                continue
            try:
                from bench_decode import gpu_jpeg

                run = gpu_jpeg(folder, 128, passes)
                if run is None:
                    add(rows, data, f"JPEG {size} -> RGB on the GPU (torchvision decode_jpeg)", float("nan"), 0,
                        note="torchvision's decode_jpeg is not available")
                    continue
                best = 0.0
                for _ in range(3):
                    start = time.perf_counter()
                    n = run()
                    best = max(best, n / (time.perf_counter() - start))
                add(rows, data, f"JPEG {size} -> RGB on the GPU (torchvision decode_jpeg, batches of 128)", best, n,
                    note="file reading included; best of 3")
            except Exception as e:  # noqa: BLE001
                add(rows, data, f"JPEG {size} -> RGB on the GPU (torchvision decode_jpeg)", float("nan"), 0,
                    note=f"failed: {type(e).__name__}: {e}"[:200])


def add(rows: list, data: dict, name: str, fps: float, frames: int, max_diff: float = float("nan"),
        mean_diff: float = float("nan"), note: str = "", **extra) -> None:
    rows.append([name, fps, frames, max_diff, mean_diff, note])
    data["rows"].append({"measurement": name, "frames_per_s": fps, "frames": frames, "max_abs_diff": max_diff,
                         "mean_abs_diff": mean_diff, "note": note, **extra})
    print("row:", markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)


def rate_row(rows: list, data: dict, name: str, measure: Callable[[], tuple[float, int]]) -> None:
    """The row of `measure()`'s (frames/s, frames), or the same row saying how it failed: the probe reports what
    does not work rather than raising, so that one run shows every row."""
    try:
        fps, n = measure()
    except Exception as e:  # noqa: BLE001
        add(rows, data, name, float("nan"), 0, note=f"failed: {type(e).__name__}: {e}"[:300])
        return
    add(rows, data, name, fps, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xvid", type=Path, default=DEFAULT_DIR, help="folder made by make_xvid.py")
    ap.add_argument("--files", type=int, default=8, help="packed-XviD files decoded in the rate rows")
    ap.add_argument("--decoders", default="1,4,7,14", help="concurrent NVDEC decoders (threads) per rate row")
    ap.add_argument("--seconds", type=float, default=1.5, help="time per rate row")
    ap.add_argument("--jpeg-processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--jpeg-videos", type=int, default=2, help="XviD files turned into JPEG frames")
    ap.add_argument("--jpeg-passes", type=int, default=4)
    ap.add_argument("--skip-jpeg", action="store_true")
    args = ap.parse_args(argv)

    files, counts, manifest = load_xvid_set(args.xvid)
    nvc, status = load_nvc()
    gpu = torch.cuda.is_available()
    print(f"probe_nvdec: {status}", flush=True)
    rows: list = []
    data: dict = {"nvdec": status, "rows": [], "accuracy": {}}
    packed = files[: max(1, args.files)]
    by_kind = {"xvid-packed": packed}
    for e in manifest.get("probe", []):
        by_kind.setdefault(e["kind"], []).append(args.xvid / e["file"])
    labels = {"xvid-packed": "XviD packed B-frames .avi (UCF-101, as is)",
              "xvid-unpacked": "XviD, B-frames unpacked (mpeg4_unpack_bframes)", "h264": "H.264 .mp4 (x264)"}

    fps, n = cpu_rate(packed[0], args.seconds)
    add(rows, data, f"CPU path, 1 process: {labels['xvid-packed']} -> RGB 320x240 (c3dnet, PyAV)", fps, n,
        note="per core: compare NVDEC with this times the cores that decode")
    if nvc is not None:
        usable: dict[str, list[Path]] = {}
        for kind, paths in by_kind.items():
            print(f"{kind}: {decoder_caps(nvc, paths[0])}", flush=True)
            try:
                acc = accuracy(nvc, paths[0], counts[paths[0].name if kind == "xvid-packed" else
                                                    str(paths[0].relative_to(args.xvid))])
            except Exception as e:  # noqa: BLE001 - the probe reports what does not work
                add(rows, data, f"NVDEC {labels.get(kind, kind)}: decode", float("nan"), 0,
                    note=f"failed: {type(e).__name__}: {e}"[:300])
                continue
            data["accuracy"][kind] = acc
            same = acc["nvdec_frames"] == acc["ffprobe_frames"] == acc["c3dnet_frames"] == acc["nvdec_rgb_frames"]
            counts_note = (f"frames: NVDEC {acc['nvdec_frames']} (RGB {acc['nvdec_rgb_frames']}), ffprobe "
                           f"{acc['ffprobe_frames']}, c3dnet {acc['c3dnet_frames']}, PyAV {acc['pyav_frames']}"
                           + ("" if same else " (DIFFER)"))
            add(rows, data, f"NVDEC {labels.get(kind, kind)}: luma vs PyAV", float("nan"), acc["nvdec_frames"],
                acc["luma_max"], acc["luma_mean"],
                note=f"{counts_note}; {acc['luma_frames_exact']} frames identical", **{"counts_agree": same})
            add(rows, data, f"NVDEC {labels.get(kind, kind)}: RGB vs c3dnet's RGB", float("nan"),
                acc["nvdec_rgb_frames"], acc["rgb_max"], acc["rgb_mean"],
                note="NVDEC's YUV->RGB conversion against swscale's (c3dnet's)")
            usable[kind] = paths
        for kind, paths in usable.items():
            label = labels.get(kind, kind)
            for d in [int(x) for x in args.decoders.split(",")]:
                if kind == "xvid-packed" or d in (1, 7):
                    rate_row(rows, data, f"NVDEC {label}, {d} decoder(s), NV12 in GPU memory",
                             partial(nvdec_rate, nvc, paths, d, args.seconds, rgb=False))
            if kind == "xvid-packed":
                rate_row(rows, data, f"NVDEC {label}, 7 decoder processes, NV12 in GPU memory",
                         partial(nvdec_rate_processes, paths, 7, args.seconds, rgb=False))
                rate_row(rows, data, f"NVDEC {label}, 7 decoders, RGB in GPU memory",
                         partial(nvdec_rate, nvc, paths, 7, args.seconds, rgb=True))
    if not args.skip_jpeg:
        jpeg_rows(files[: args.jpeg_videos], args.jpeg_processes, args.jpeg_passes, rows, data, gpu)
    table = markdown_table(HEADERS, rows)
    device = torch.device("cuda" if gpu else "cpu")
    command = "python benchmarks/probe_nvdec.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if gpu:
        write_results("nvdec_cuda", "GPU decoding probe: NVDEC (PyNvVideoCodec) and nvJPEG against the CPU path",
                      environment(device), table, data, command)
    else:
        print(f"\n{table}\n")
        print(json.dumps({"nvdec": status}))
    print(f"probe_nvdec: {status}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
