"""Decoding throughput per worker (one process), frames/s: PyAV video vs JPEG frame folders, at 320x240.

Run: `python benchmarks/bench_decode.py [--frames 190] [--repeats 3] [--clips 20]`. Prints a table.
The videos hold moving textured content, so that the encoders do real inter-frame work:
- MPEG-4 Part 2 in .avi without B-frames (FFmpeg's encoder), GOP 12 and GOP 300 (one keyframe);
- UCF-101's own encoding: XviD with packed B-frames in .avi, made by MEncoder from the first file (Debian's
  `mencoder` is needed), with XviD's default keyframe interval (as UCF-101: one keyframe in most videos) and with
  a keyframe every 12 frames, each compared with the MPEG-4 file of the same keyframe spacing;
- H.264 in .mp4 with x264's defaults (GOP 250, B-frames).
Frame folders are JPEG quality 95, as `c3d prepare` writes them. Every frame count is checked against FFmpeg's.
With CUDA and torchvision present it adds batched GPU JPEG decoding (`torchvision.io.decode_jpeg` on the GPU,
file reading included), to weigh against the CPU rows times the cores a machine has per GPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c3dnet.data import video as video_module
from c3dnet.data.decode import iter_frames, read_frames, video_info
from c3dnet.data.encode import write_video
from c3dnet.data.resize import resize_image
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
    """Best frames/s over `repeats` runs of fn (which returns the number of frames it produced), after one
    untimed run (imports, caches, first-call set-up)."""
    fn()
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


def mencoder_xvid(src: Path, dst: Path, keyint: int | None) -> Path:
    """`src` re-encoded as UCF-101 is: XviD with packed B-frames, by MEncoder."""
    if shutil.which("mencoder") is None:
        sys.exit("bench_decode: needs `mencoder` for UCF-101's encoding (apt-get install -y mencoder)")
    opts = "bitrate=400:max_bframes=2:packed" + (f":max_key_interval={keyint}" if keyint else "")
    subprocess.run(["mencoder", str(src), "-really-quiet", "-nosound", "-ovc", "xvid", "-xvidencopts", opts,
                    "-o", str(dst)], check=True, capture_output=True)
    return dst


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
        video300 = tmp / "v300.avi"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-c:v", "mpeg4", "-q:v", "5", "-g", "300",
                        str(video300)], check=True)
        packed = mencoder_xvid(video, tmp / "packed.avi", None)
        packed12 = mencoder_xvid(video, tmp / "packed12.avi", 12)
        h264 = tmp / "v.mp4"
        write_video(h264, frames, codec="libx264", quality=23, intra_only=False)
        full, small = tmp / "jpg320", tmp / "jpg171"
        full.mkdir()
        small.mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(full / f"img_{i + 1:05d}.jpg", quality=95)
            Image.fromarray(resize_image(f, (128, 171))).save(small / f"img_{i + 1:05d}.jpg", quality=95)
        # warm the frame index, as a dataset does after one epoch
        for path in (video, video300, packed, packed12, h264):
            info = video_info(path)
            if shutil.which("ffprobe") and info.num_frames != ffprobe_frames(path):
                sys.exit(f"bench_decode: {path.name}: {info.num_frames} frames, FFmpeg counts {ffprobe_frames(path)}")

        rng = np.random.default_rng(0)
        starts = rng.integers(0, n - 16, args.clips)

        def all_frames(path: Path, size=None) -> Callable[[], int]:
            return lambda: sum(len(c) for c in iter_frames(path, size_hw=size))

        def clips(path: Path, size=None) -> Callable[[], int]:
            return lambda: sum(len(read_frames(path, np.arange(s, s + 16), size)) for s in starts)

        kinds = (("MPEG-4 .avi (no B-frames, GOP 12)", video),
                 ("MPEG-4 .avi (no B-frames, GOP 300: one keyframe)", video300),
                 ("XviD packed B-frames .avi (MEncoder, as UCF-101; keyframes: XviD's default)", packed),
                 ("XviD packed B-frames .avi (MEncoder; keyframe every 12)", packed12))
        rows = []
        for name, path in kinds:
            rows += [(f"{name}, all frames -> RGB 320x240", all_frames(path)),
                     (f"{name}, all frames -> RGB 171x128", all_frames(path, (128, 171))),
                     (f"{name}, random 16-frame clips -> 171x128", clips(path, (128, 171)))]
        rows += [
            ("H.264 .mp4 320x240, all frames -> RGB 320x240", all_frames(h264)),
            ("H.264 .mp4 (GOP 250: each clip decodes from frame 0), random clips -> 171x128", clips(h264, (128, 171))),
            ("JPEG folder 320x240 -> RGB 320x240 (OpenCV)", all_frames(full)),
            ("JPEG folder 320x240 -> RGB 171x128 (OpenCV decode and resize, as the seed)",
             all_frames(full, (128, 171))),
            ("JPEG folder 171x128 (pre-resized by prepare) -> RGB (OpenCV)", all_frames(small)),
            ("JPEG folder 171x128, random 16-frame clips (OpenCV)", clips(small)),
        ]
        gpu_rows = [(f"JPEG folder {size} -> RGB on the GPU (torchvision, batches of 128 files)", fn)
                    for size, folder in (("320x240", full), ("171x128", small))
                    if (fn := gpu_jpeg(folder, 128)) is not None]
        rows += gpu_rows
        table_rows, data = [], {"frames": n, "rows": []}
        measured: dict[str, float] = {}
        for name, fn in rows:
            fps = timed(fn, args.repeats)
            measured[name] = fps
            print(f"{name:<96} {fps:9.0f} {fps / 16:8.1f}", flush=True)
            table_rows.append([name, fps, fps / 16])
            data["rows"].append({"source": name, "frames_per_s": fps})
        from c3dnet.data.dataset import ClipDataset
        from c3dnet.data.sources import VideoRecord
        from c3dnet.preprocess import SEED_PREPROCESS

        title = "ClipDataset item (seed preprocessing), one process"
        print(f"\n{title:<96} {'clips/s':>9}")
        for name, rec in (("MPEG-4 .avi (no B-frames, GOP 12)", VideoRecord(video, 0)),
                          ("XviD packed B-frames .avi (as UCF-101)", VideoRecord(packed, 0)),
                          ("JPEG 171x128 frame folder", VideoRecord(small, 0, n)),
                          ("JPEG 320x240 folder (resized to 171x128)", VideoRecord(full, 0, n))):
            for mode, k in (("train", 1), ("test", 10)):
                ds = ClipDataset([rec] * args.clips, mode, SEED_PREPROCESS)
                cps = timed(lambda ds=ds, k=k: k * sum(1 for i in range(len(ds)) if ds[i][0] is not None),
                            args.repeats)
                label = f"{'train clip' if mode == 'train' else '10 test clips'} from {name}"
                print(f"{label:<96} {cps:9.1f}", flush=True)
                table_rows.append([f"ClipDataset: {label}", cps * 16, cps])
                data["rows"].append({"source": f"ClipDataset: {label}", "clips_per_s": cps})
        for name, path, how in (("MPEG-4 .avi", video, "counted: decoded once"),
                                ("XviD packed .avi", packed, "counted: decoded once"),
                                ("H.264 .mp4", h264, "timed: packet pass, no decoding")):
            t = time.perf_counter()
            for _ in range(10):
                video_module.index_cache.clear()
                video_info(path)
            ms = (time.perf_counter() - t) / 10 * 1000
            print(f"frame index of a {n}-frame {name} ({how}): {ms:.2f} ms")
            data[f"index_ms_{name.split()[0]}"] = ms
        print("\nXviD packed B-frames (UCF-101 encoding) / MPEG-4 without B-frames, same keyframes, per worker:")
        for what in ("all frames -> RGB 320x240", "all frames -> RGB 171x128", "random 16-frame clips -> 171x128"):
            for (name, _), (base_name, _) in ((kinds[2], kinds[1]), (kinds[3], kinds[0])):
                ratio = measured[f"{name}, {what}"] / measured[f"{base_name}, {what}"]
                spacing = "one keyframe" if base_name == kinds[1][0] else "keyframe every 12"
                print(f"  {what:<36} {spacing:<20} {ratio:5.2f}")
                data.setdefault("ratios", []).append({"row": what, "keyframes": spacing, "ratio": ratio})
    table = markdown_table(["source (one process)", "frames/s", "clips/s"], table_rows)
    device = torch.device("cuda" if gpu_rows else "cpu")
    write_results("decode" if not gpu_rows else "decode_cuda", f"Decoding per worker, 320x240 input, {n} frames",
                  environment(device),
                  table, data, "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:]))


def ffprobe_frames(path: Path) -> int:
    """FFmpeg's own frame count (decoding every frame)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], check=True, capture_output=True)
    return int(out.stdout.decode().strip().split(",")[0])


if __name__ == "__main__":
    main()
