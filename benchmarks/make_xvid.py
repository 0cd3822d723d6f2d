"""UCF-101's real encoding for the benchmarks: MEncoder XviD with packed B-frames, 320x240, ~190 frames.

    python benchmarks/make_xvid.py                     # 24 files into benchmarks/xvid/ (git-ignored), ~11 MB
    python benchmarks/make_xvid.py --count 4 --out /tmp/x --frames 40

Each file is made as the test suite's oracle makes UCF-101's kind: FFmpeg renders a source clip at 320x240,
25 fps (MPEG-4 at q1, nearly lossless), then `mencoder_xvid` re-encodes it (`mencoder -ovc xvid -xvidencopts
bitrate=400:max_bframes=2:packed`, the command tests/oracle.py's XviD corpus files are built with too), with
XviD's default keyframe interval (one keyframe in most files, as in UCF-101). The content varies from file to
file (test patterns, a fractal zoom, cellular automata, colour gradients), each seen through a moving, shaking
crop with sensor-like noise, so that motion search and B-frames do real work; the frame counts vary around 190
(UCF-101's mean is 186).

Beside the .avi files it writes, for the NVDEC probe (benchmarks/probe_nvdec.py), `probe/`: the first
`--probe-files` of them with the packed B-frames unpacked (`ffmpeg -c copy -bsf:v mpeg4_unpack_bframes`: the same
frames, one VOP per AVI chunk) and as H.264 `.mp4` (x264's defaults, B-frames). `manifest.json` lists every file
with FFmpeg's own frame count (`ffprobe -count_frames`), so that machines without FFmpeg's tools (the GPU machine)
can check the counts their decoders give. `bench_e2e.py --xvid DIR` and `bench_extract.py --xvid DIR` expand the
files by symlinks to the sizes they measure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "xvid"
MANIFEST = "manifest.json"
XVID_OPTS = "bitrate=400:max_bframes=2:packed"  # UCF-101's kind: 400 kb/s, 2 B-frames, packed bitstream

# Source clips, rendered larger than 320x240 and seen through a moving crop (a panning, shaking camera).
CONTENTS = (
    ("testsrc2", "testsrc2=size=400x300:rate=25"),
    ("mandelbrot", "mandelbrot=size=400x300:rate=25:maxiter=64:start_scale=3:end_scale=0.3:end_pts=12"),
    ("life", "life=size=400x300:rate=25:mold=10:ratio=0.3:life_color=#c0a040:death_color=#204080:seed={seed}"),
    ("cellauto", "cellauto=size=400x300:rate=25:rule={rule}:random_fill_ratio=0.5:seed={seed}:scroll=1"),
    ("gradients", "gradients=size=400x300:rate=25:n=5:speed=0.05:seed={seed}"),
    ("smptehdbars", "smptehdbars=size=400x300:rate=25"),
)


def mencoder_xvid(src: str, out: str, key_interval: int | None = None) -> tuple[str, ...]:
    """The MEncoder command that re-encodes `src` as UCF-101's kind of file (XVID_OPTS), with XviD's default
    keyframe interval unless `key_interval` is given. tests/oracle.py builds its XviD corpus files with it, so
    the benchmarks' set and the decoder tests' files cannot drift apart."""
    opts = XVID_OPTS + (f":max_key_interval={key_interval}" if key_interval else "")
    return ("mencoder", src, "-really-quiet", "-nosound", "-ovc", "xvid", "-xvidencopts", opts, "-o", out)


def frame_count(index: int, frames: int) -> int:
    """Frame counts vary around `frames`: -30..+30 in a fixed pattern."""
    return max(8, frames + (index * 37) % 61 - 30)


def ffprobe_frames(path: Path) -> int:
    """FFmpeg's own frame count: every frame decoded (`ffprobe -count_frames`)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], check=True, capture_output=True)
    return int(out.stdout.decode().strip().split(",")[0])


def _source_graph(index: int) -> tuple[str, str]:
    name, graph = CONTENTS[index % len(CONTENTS)]
    graph = graph.format(seed=1000 + index, rule=(30, 90, 110, 150)[index % 4])
    # A slow pan with a shake, a light hue drift, temporal noise like a camera's.
    ax, ay, fx = 20 + index % 20, 10 + index % 15, 0.6 + (index % 7) / 10
    move = (f"crop=320:240:x='40+{ax}*sin(t*{fx:.1f})+3*sin(t*11)':y='30+{ay}*cos(t*{fx * 0.7:.2f})+2*cos(t*13)'"
            f",hue=h='{index * 25}+20*t',noise=alls=6:allf=t,format=yuv420p")
    return name, f"{graph},{move}"


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}")


def make_one(job: tuple[Path, int, int]) -> dict:
    """One packed-XviD file: <out>/xvid_NNN.avi, with its content name and FFmpeg's frame count."""
    out, index, frames = job
    name, graph = _source_graph(index)
    dst = out / f"xvid_{index:03d}.avi"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        src = Path(tmp) / "src.avi"
        _run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", graph, "-frames:v", str(frames),
              "-c:v", "mpeg4", "-q:v", "1", str(src)])
        part = Path(tmp) / dst.name
        _run(list(mencoder_xvid(str(src), str(part))))
        part.replace(dst)  # same folder: atomic, so an interrupted run leaves no half-written .avi
    return {"file": dst.name, "content": name, "source_frames": frames, "frames": ffprobe_frames(dst),
            "bytes": dst.stat().st_size, "kind": "xvid-packed"}


def make_probe_variants(out: Path, entries: list[dict]) -> list[dict]:
    """probe/: the packed files unpacked (one VOP per chunk, same frames) and as H.264 .mp4, for NVDEC."""
    from c3dnet.fileio import atomic_path

    probe = out / "probe"
    probe.mkdir(exist_ok=True)
    made = []
    for e in entries:
        src = out / e["file"]
        stem = Path(e["file"]).stem
        for kind, name, args in (
                ("xvid-unpacked", f"{stem}_unpacked.avi", ["-c", "copy", "-bsf:v", "mpeg4_unpack_bframes"]),
                ("h264", f"{stem}_h264.mp4", ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                                              "-pix_fmt", "yuv420p"])):
            dst = probe / name
            with atomic_path(dst, suffix=dst.suffix) as tmp:  # FFmpeg picks the muxer by the extension
                _run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(src), "-an", *args, str(tmp)])
            made.append({"file": f"probe/{name}", "content": e["content"], "frames": ffprobe_frames(dst),
                         "bytes": dst.stat().st_size, "kind": kind, "from": e["file"]})
    return made


def make_xvid_set(out: Path, count: int, frames: int, processes: int, probe_files: int) -> dict:
    """Make the set and its manifest (written last, atomically); returns the manifest."""
    for tool in ("ffmpeg", "ffprobe", "mencoder"):
        if shutil.which(tool) is None:
            raise SystemExit(f"make_xvid: `{tool}` is needed (Debian: apt-get install -y ffmpeg mencoder)")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, i, frame_count(i, frames)) for i in range(count)]
    with mp.get_context("fork").Pool(max(1, processes)) as pool:
        entries = pool.map(make_one, jobs)
    probe = make_probe_variants(out, entries[:probe_files]) if probe_files else []
    manifest = {"recipe": f"mencoder -ovc xvid -xvidencopts {XVID_OPTS} (XviD's default keyframe interval), "
                          "from FFmpeg lavfi sources at 320x240, 25 fps; frames: ffprobe -count_frames",
                "width": 320, "height": 240, "fps": 25, "videos": entries, "probe": probe}
    from c3dnet.fileio import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def load_xvid_set(folder: Path) -> tuple[list[Path], dict[str, int], dict]:
    """The packed-XviD files of a folder made by this script: their paths, FFmpeg's frame count per file name,
    and the whole manifest. Exits with what to run when the folder or its manifest is missing."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SystemExit(f"{path}: no XviD set here; make one with `python benchmarks/make_xvid.py --out {folder}` "
                         "(needs Debian's mencoder and ffmpeg)")
    manifest = json.loads(path.read_text())
    videos = [folder / e["file"] for e in manifest["videos"]]
    missing = [p for p in videos if not p.is_file()]
    if missing or not videos:
        raise SystemExit(f"{folder}: {len(missing)} of the {len(videos)} files in {MANIFEST} are missing; "
                         f"make the set again with `python benchmarks/make_xvid.py --out {folder}`")
    counts = {e["file"]: e["frames"] for e in manifest["videos"] + manifest.get("probe", [])}
    return videos, counts, manifest


def check_counts(videos: list[Path], counts: dict[str, int]) -> None:
    """c3dnet's frame count of each file (its frame index) against FFmpeg's from the manifest; exits on a mismatch."""
    from c3dnet.data.decode import video_info

    bad = []
    for p in videos:
        got, want = video_info(p).num_frames, counts[p.name]
        if got != want:
            bad.append(f"{p.name}: c3dnet {got}, ffprobe {want}")
    if bad:
        raise SystemExit("frame counts differ from FFmpeg's: " + "; ".join(bad))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"folder (default {DEFAULT_DIR})")
    ap.add_argument("--count", type=int, default=24, help="packed-XviD files (default 24)")
    ap.add_argument("--frames", type=int, default=190, help="mean source frames per file (default 190)")
    ap.add_argument("--probe-files", type=int, default=2,
                    help="files also written unpacked and as H.264 into probe/ for the NVDEC probe (default 2)")
    ap.add_argument("--processes", type=int, default=mp.cpu_count())
    args = ap.parse_args(argv)
    start = time.perf_counter()
    manifest = make_xvid_set(args.out, args.count, args.frames, args.processes, min(args.probe_files, args.count))
    total = sum(e["bytes"] for e in manifest["videos"] + manifest["probe"])
    frames = [e["frames"] for e in manifest["videos"]]
    print(f"{len(frames)} packed-XviD files in {args.out}: {sum(frames)} frames ({min(frames)}-{max(frames)} per "
          f"file, ffprobe), {len(manifest['probe'])} probe variants, {total / 1e6:.1f} MB in all, "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
