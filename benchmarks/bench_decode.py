"""Decoding throughput per worker (one process), frames/s: PyAV video vs JPEG frame folders, at 320x240.

Run: `python benchmarks/bench_decode.py [--frames 190] [--repeats 3] [--clips 20]`. Prints a table.
The test video is MPEG-4 Part 2 in .avi (as UCF-101 ships), GOP 12, with moving textured content so that the
encoder does real inter-frame work; frame folders are JPEG quality 95, as `c3d prepare` writes them.
With CUDA and torchvision present it adds batched GPU JPEG decoding (`torchvision.io.decode_jpeg` on the GPU,
file reading included), to weigh against the CPU rows times the cores a machine has per GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c3dnet.data import decode
from c3dnet.data.decode import iter_frames, read_frames
from c3dnet.data.encode import write_video
from common import environment, markdown_table, write_results  # noqa: E402


def make_frames(n: int, h: int = 240, w: int = 320) -> np.ndarray:
    """(n, h, w, 3) uint8: a textured scene panning and a bright square moving, plus light noise."""
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (h // 8, (w + 4 * n) // 8, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(scene).resize(((w + 4 * n), h), Image.BILINEAR))
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        f = scene[:, 4 * i : 4 * i + w].copy()
        y, x = (i * 3) % (h - 40), (i * 5) % (w - 40)
        f[y : y + 40, x : x + 40] = 250
        frames[i] = np.clip(f.astype(np.int16) + rng.integers(-6, 7, f.shape), 0, 255).astype(np.uint8)
    return frames


def timed(fn: Callable[[], int], repeats: int) -> float:
    """Best frames/s over `repeats` runs of fn (which returns the number of frames it produced)."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def gpu_jpeg(folder: Path, batch: int, passes: int = 4) -> Callable[[], int] | None:
    """Batched GPU decoding of a JPEG folder through torchvision (None without CUDA or torchvision)."""
    if not torch.cuda.is_available():
        return None
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # noqa: BLE001 - torchvision is optional, and may not import beside this torch
        return None
    files = sorted(folder.glob("*.jpg")) * passes

    def run() -> int:
        for lo in range(0, len(files), batch):
            data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files[lo:lo + batch]]
            decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
        torch.cuda.synchronize()
        return len(files)

    run()  # CUDA and nvJPEG start-up outside the timing
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=190)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clips", type=int, default=20, help="random 16-frame clips per clip measurement")
    args = ap.parse_args()
    n = args.frames
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = make_frames(n)
        video = tmp / "v.avi"
        write_video(video, frames, quality=5, intra_only=False)
        h264 = tmp / "v.mp4"
        write_video(h264, frames, codec="libx264", quality=23, intra_only=False)
        full, small = tmp / "jpg320", tmp / "jpg171"
        full.mkdir()
        small.mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(full / f"img_{i + 1:05d}.jpg", quality=95)
            Image.fromarray(f).resize((171, 128), Image.BILINEAR).save(small / f"img_{i + 1:05d}.jpg", quality=95)
        decode.count_frames(video), decode.count_frames(h264)  # warm the packet index cache, as a dataset does

        rng = np.random.default_rng(0)
        starts = rng.integers(0, n - 16, args.clips)
        decoders = ["OpenCV", "PIL"] if decode._opencv() is not None else ["PIL"]

        def use_jpeg_decoder(name: str) -> None:
            os.environ["C3DNET_JPEG"] = name.lower()
            decode._cv2 = None  # look again

        def all_frames(path: Path, size=None) -> Callable[[], int]:
            return lambda: sum(len(c) for c in iter_frames(path, size_hw=size))

        def clips(path: Path, size=None) -> Callable[[], int]:
            return lambda: sum(len(read_frames(path, np.arange(s, s + 16), size)) for s in starts)

        rows = [
            ("MPEG-4 .avi 320x240, all frames -> RGB 320x240", all_frames(video)),
            ("MPEG-4 .avi 320x240, all frames -> RGB 171x128 (swscale)", all_frames(video, (128, 171))),
            ("MPEG-4 .avi, random 16-frame clips -> 171x128 (decode only needed)", clips(video, (128, 171))),
            ("H.264 .mp4 320x240, all frames -> RGB 320x240", all_frames(h264)),
            ("H.264 .mp4 (GOP 250: each clip decodes from frame 0), random clips -> 171x128", clips(h264, (128, 171))),
        ]
        for jpeg in decoders:
            rows += [
                (f"JPEG folder 320x240 -> RGB 320x240 ({jpeg})", all_frames(full), jpeg),
                (f"JPEG folder 320x240 -> RGB 171x128 ({jpeg}, PIL resize)", all_frames(full, (128, 171)), jpeg),
                (f"JPEG folder 171x128 (pre-resized by prepare) -> RGB ({jpeg})", all_frames(small), jpeg),
                (f"JPEG folder 171x128, random 16-frame clips ({jpeg})", clips(small), jpeg),
            ]
        gpu_rows = [(f"JPEG folder {size} -> RGB on the GPU (torchvision, batches of 128 files)", fn)
                    for size, folder in (("320x240", full), ("171x128", small))
                    if (fn := gpu_jpeg(folder, 128)) is not None]
        rows += gpu_rows
        table_rows, data = [], {"frames": n, "rows": []}
        for name, fn, *jpeg in rows:
            use_jpeg_decoder(jpeg[0] if jpeg else decoders[0])
            fps = timed(fn, args.repeats)
            print(f"{name:<80} {fps:9.0f} {fps / 16:8.1f}", flush=True)
            table_rows.append([name, fps, fps / 16])
            data["rows"].append({"source": name, "frames_per_s": fps})
        from c3dnet.data.dataset import ClipDataset
        from c3dnet.data.sources import VideoRecord
        from c3dnet.preprocess import SEED_PREPROCESS

        use_jpeg_decoder(decoders[0])
        title = f"ClipDataset item (seed preprocessing, JPEG by {decoders[0]}), one process"
        print(f"\n{title:<80} {'clips/s':>9}")
        for name, rec in (("train clip from MPEG-4 .avi (16 frames decoded at 171x128)", VideoRecord(video, 0)),
                          ("train clip from JPEG 171x128 frame folder", VideoRecord(small, 0, n)),
                          ("train clip from JPEG 320x240 folder (resized to 171x128)", VideoRecord(full, 0, n))):
            for mode, k in (("train", 1), ("test", 10)):
                ds = ClipDataset([rec] * args.clips, mode, SEED_PREPROCESS)
                cps = timed(lambda ds=ds, k=k: k * sum(1 for i in range(len(ds)) if ds[i][0] is not None), 1)
                label = name if mode == "train" else name.replace("train clip", "10 test clips")
                print(f"{label:<80} {cps:9.1f}", flush=True)
                table_rows.append([f"ClipDataset: {label}", cps * 16, cps])
                data["rows"].append({"source": f"ClipDataset: {label}", "clips_per_s": cps})
        for name, path in (("MPEG-4 .avi", video), ("H.264 .mp4", h264)):
            t = time.perf_counter()
            for _ in range(20):
                decode._index_cache.clear()
                decode.count_frames(path)
            ms = (time.perf_counter() - t) / 20 * 1000
            print(f"frame count + timing index of a {n}-frame {name} (packet pass, no decoding): {ms:.2f} ms")
            data[f"index_ms_{name.split()[0]}"] = ms
    table = markdown_table(["source (one process)", "frames/s", "clips/s"], table_rows)
    device = torch.device("cuda" if gpu_rows else "cpu")
    write_results("decode" if not gpu_rows else "decode_cuda", f"Decoding per worker, 320x240 input, {n} frames",
                  environment(device),
                  table, data, "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
