"""The benchmarks' UCF-101 encoding and GPU-decoding probe, on the CPU: benchmarks/make_xvid.py makes packed
XviD files whose recorded frame counts are FFmpeg's and c3dnet's; bench_extract / bench_e2e read them through
symlinks and check the counts; probe_nvdec exits cleanly without CUDA; bench_model's batch sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from c3dnet.data.decode import video_info
from tests.oracle import require

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import make_xvid  # noqa: E402


def _ffprobe(path: Path, entries: str) -> str:
    out = subprocess.run([require("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                          f"stream={entries}", "-of", "csv=p=0", str(path)], check=True, capture_output=True)
    return out.stdout.decode().strip()


def _pyav_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture(scope="module")
def xvid_set(tmp_path_factory) -> Path:
    for tool in ("ffmpeg", "ffprobe", "mencoder"):
        require(tool)
    out = tmp_path_factory.mktemp("xvid")
    make_xvid.make_xvid_set(out, count=3, frames=40, processes=2, probe_files=1)
    return out


def test_make_xvid_writes_packed_xvid_with_ffmpegs_counts(xvid_set):
    manifest = json.loads((xvid_set / "manifest.json").read_text())
    assert [e["file"] for e in manifest["videos"]] == ["xvid_000.avi", "xvid_001.avi", "xvid_002.avi"]
    assert len({e["content"] for e in manifest["videos"]}) == 3  # varied content
    for e in manifest["videos"]:
        path = xvid_set / e["file"]
        # MPEG-4 Part 2 in XviD's FourCC, B-frames, and DivX's "packed bitstream" marker (user data ending in p)
        assert _ffprobe(path, "codec_name,codec_tag_string,width,height,has_b_frames") == "mpeg4,XVID,320,240,1"
        data = path.read_bytes()
        marker = data[data.index(b"DivX"):data.index(b"DivX") + 16]
        assert marker.split(b"\x00")[0].endswith(b"p"), marker
        # the recorded count is FFmpeg's: PyAV decodes as many, and c3dnet's own count agrees
        assert e["frames"] == _pyav_count(path) == video_info(path).num_frames
        assert e["source_frames"] - 1 <= e["frames"] <= e["source_frames"]
    files, counts, _ = make_xvid.load_xvid_set(xvid_set)
    make_xvid.check_counts(files, counts)  # raises on any mismatch
    sizes = [make_xvid.frame_count(i, 40) for i in range(3)]
    assert sizes == [e["source_frames"] for e in manifest["videos"]] and len(set(sizes)) == 3


def test_probe_variants_hold_the_same_frames(xvid_set):
    manifest = json.loads((xvid_set / "manifest.json").read_text())
    kinds = {e["kind"]: e for e in manifest["probe"]}
    assert set(kinds) == {"xvid-unpacked", "h264"}
    packed = manifest["videos"][0]
    unpacked = xvid_set / kinds["xvid-unpacked"]["file"]
    data = unpacked.read_bytes()
    assert not data[data.index(b"DivX"):data.index(b"DivX") + 16].split(b"\x00")[0].endswith(b"p")
    assert _ffprobe(xvid_set / kinds["h264"]["file"], "codec_name") == "h264"
    for e in kinds.values():
        assert e["frames"] == packed["frames"] == _pyav_count(xvid_set / e["file"])
    # unpacking changes the bitstream's framing, not the pictures
    with av.open(str(xvid_set / packed["file"])) as a, av.open(str(unpacked)) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0)):
            assert (fa.to_ndarray() == fb.to_ndarray()).all()


def test_load_and_check_say_what_to_run(tmp_path, xvid_set):
    with pytest.raises(SystemExit, match="make_xvid.py --out"):
        make_xvid.load_xvid_set(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((xvid_set / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="3 of the 3 files .* are missing"):
        make_xvid.load_xvid_set(broken)
    files, counts, _ = make_xvid.load_xvid_set(xvid_set)
    counts = dict(counts, **{files[1].name: counts[files[1].name] + 1})
    with pytest.raises(SystemExit, match=f"{files[1].name}: c3dnet {counts[files[1].name] - 1}, ffprobe"):
        make_xvid.check_counts(files, counts)


def test_e2e_links_xvid_into_ucf101_layout_and_checks_prepared_counts(tmp_path, xvid_set):
    import bench_e2e

    files, counts, _ = make_xvid.load_xvid_set(xvid_set)
    ucf = bench_e2e.make_ucf_like(tmp_path, 7, 2, 0, 1, xvid=files)
    links = sorted(ucf.rglob("*.avi"))
    assert len(links) == 7 and all(p.is_symlink() for p in links)
    assert {p.resolve() for p in links} == {f.resolve() for f in files}
    # c3d prepare's lists, as prepare writes them: frames/<Class>/<stem> <frames> <label>
    frames_root = tmp_path / "frames"
    frames_root.mkdir()
    lines = [f"frames/{p.parent.name}/{p.stem} {counts[p.resolve().name]} 0" for p in links]
    (frames_root / "train_split1.txt").write_text("\n".join(lines[:5]) + "\n")
    (frames_root / "test_split1.txt").write_text("\n".join(lines[5:]) + "\n")
    bench_e2e.check_prepared(ucf, frames_root, counts)
    bad = lines[5].rsplit(" ", 2)
    (frames_root / "test_split1.txt").write_text(f"{bad[0]} {int(bad[1]) + 2} 0\n")
    with pytest.raises(SystemExit, match=r"1 of 6 videos differ.*\(xvid_00\d.avi\): \d+ frames, ffprobe"):
        bench_e2e.check_prepared(ucf, frames_root, counts)


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, C3DNET_BENCH_RESULTS=str(tmp_path), PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_extract_reads_the_xvid_set(tmp_path, xvid_set):
    done = _run(["benchmarks/bench_extract.py", "--xvid", str(xvid_set), "--videos", "5", "--workers", "2",
                 "--batch-size", "4", "--decode-only-videos", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "extract_cpu_xvid.json").read_text())
    counts = [e["frames"] for e in json.loads((xvid_set / "manifest.json").read_text())["videos"]]
    total = sum(counts[i % 3] for i in range(5))
    assert f"5 videos, {total} frames" in result["setting"]
    assert "packed B-frames; symlinks over 3 files" in result["setting"]
    rows = {r["measurement"].split(",")[0]: r for r in result["rows"]}
    assert rows["extract with no model (decode"]["frames_per_s"] > 0
    assert any(k.startswith("extract fc6") and r["frames_per_s"] > 0 for k, r in rows.items())


def test_probe_nvdec_without_cuda_says_so_and_exits_cleanly(tmp_path, xvid_set):
    done = _run(["benchmarks/probe_nvdec.py", "--xvid", str(xvid_set), "--seconds", "0.2", "--jpeg-videos", "1",
                 "--jpeg-passes", "1", "--jpeg-processes", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "probe_nvdec: no CUDA device (torch.cuda.is_available() is False), PyNvVideoCodec not installed" \
        in done.stdout
    counts = json.loads((xvid_set / "manifest.json").read_text())["videos"]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    cpu = next(r for r in rows if r.startswith("| CPU path, 1 process"))
    assert int(cpu.split("|")[3]) % counts[0]["frames"] == 0  # whole passes over the first file
    jpeg = [r for r in rows if r.startswith("| JPEG")]
    assert len(jpeg) == 2 and all(int(r.split("|")[3]) == counts[0]["frames"] for r in jpeg)
    assert not list(tmp_path.glob("nvdec_*"))  # nothing written without a GPU


def test_bench_model_batch_sweep_and_paths(tmp_path):
    done = _run(["benchmarks/bench_model.py", "--device", "cpu", "--paths", "naive,c3dnet", "--kinds", "inference",
                 "--infer-batch", "1,2", "--iters", "1", "--warmup", "0", "--rounds", "1", "--name", "sweep"],
                tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [(r["batch"], r["path"].split()[0]) for r in rows] == [(1, "naive"), (1, "c3dnet"), (2, "naive"),
                                                                   (2, "c3dnet")]
    assert all(r["clips_per_s"] > 0 and not r["eager_fallback"] and not r["cudagraphs_skipped"] for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[2]["ratio"] == 1.0  # each batch size against its own naive row
    bad = _run(["benchmarks/bench_model.py", "--device", "cpu", "--paths", "compile-graphs,warp"], tmp_path)
    assert bad.returncode != 0 and "unknown ['warp']" in bad.stderr


@pytest.mark.slow
def test_bench_model_marks_only_the_row_whose_compile_fell_back(tmp_path, monkeypatch):
    """A fallback to eager mode is the row's own (pass, path, batch): the other sizes of a sweep, and the training
    pass of the same path, each have their own model and say nothing unless theirs fell back too."""
    import bench_model
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_model, "EAGER_FALLBACK", set())
    real, made = bench_model.make_model, []

    def make_model(config, p, device, state):
        model = real(config, p, device, state)
        if p.key == "c3dnet" and "c3dnet" not in made:  # the first c3dnet model: inference at batch 1
            model.failed = True  # what c3dnet's Compiled sets when torch.compile raised
        made.append(p.key)
        return model

    monkeypatch.setattr(bench_model, "make_model", make_model)
    assert bench_model.main(["--device", "cpu", "--paths", "naive,c3dnet", "--infer-batch", "1,2", "--train-batch",
                             "2", "--iters", "1", "--warmup", "0", "--rounds", "1", "--name", "fallback"]) == 0
    rows = json.loads((tmp_path / "fallback.json").read_text())["rows"]
    flagged = [(r["kind"], r["path"].split()[0], r["batch"]) for r in rows if r["eager_fallback"]]
    assert flagged == [("inference", "c3dnet", 1)]
    assert len(rows) == 6
