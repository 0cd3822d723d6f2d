"""The `--ray` rows of `bench_extract.py`: `c3d extract --ray` on local Ray clusters, beside the plain extraction.

Each cluster is `ray.cluster_utils.Cluster` on this machine: a head that only drives (no CPUs for work) and K
worker nodes that share the machine's cores out (K = 1: one node with all of them; K = 2: two nodes of half
each), so every row runs on the same hardware as the plain row, and the difference is what Ray and the node
split cost. These are separate raylets on one machine: the figures say nothing of a network between nodes.

    python benchmarks/bench_extract.py --full-size --workers 1 --skip-no-model --ray 1,2 --videos 8 --frames 160
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from c3dnet.data.sources import VideoRecord
from c3dnet.features.options import ExtractOptions
from c3dnet.features.ray_extract import ModelSpec, RayOptions, extract_ray
from c3dnet.inference.recipe import FeatureRecipe
from c3dnet.model import C3D
from c3dnet.weights import save_model

STORE = 256 * 2**20  # object store per node


def ray_rows(node_counts: list[int], model: C3D, recipe: FeatureRecipe, batch_size: int, paths: list[Path],
             frame_counts: list[int], tmp: Path, device: torch.device, precision: str = "auto") -> list[tuple]:
    """(label, frames/s, clips/s, seconds) of one `extract_ray` per worker-node count, each on a fresh cluster;
    the seconds are the extraction's (cluster start-up excluded, actor start-up and model loading included)."""
    import ray
    from ray.cluster_utils import Cluster

    weights = tmp / "bench_ray.safetensors"
    save_model(model, weights)
    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    rows = []
    for k in node_counts:
        ray_tmp = tempfile.mkdtemp(prefix="c3dray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        os.makedirs(os.path.join(ray_tmp, "ray"))
        saved, os.environ["RAY_TMPDIR"] = os.environ.get("RAY_TMPDIR"), ray_tmp
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE,
                                                                 "include_dashboard": False})
        try:
            for n in range(k):
                cluster.add_node(num_cpus=max(1, cpus // k), num_gpus=gpus // k + (n < gpus % k),
                                 object_store_memory=STORE)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
            out = tmp / f"out_ray_{k}"
            t0 = time.perf_counter()
            summary = extract_ray([VideoRecord(p, -1) for p in paths], ModelSpec(str(weights), recipe.layer, precision),
                                  out, ExtractOptions(recipe, batch_size=batch_size), RayOptions(), progress=False)
            wall = time.perf_counter() - t0
            shutil.rmtree(out)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
            if saved is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = saved
        if summary.failed or summary.frames != sum(frame_counts):
            raise SystemExit(f"ray, {k} nodes: {len(summary.failed)} videos failed, {summary.frames} frames read")
        share = f"{max(1, cpus // k)} CPUs" + (f", {gpus // k} GPUs" if gpus else "")
        label = (f"extract --ray, local cluster of {k} worker node(s) of {share} each "
                 f"({wall:.1f} s with connecting and the storage check)")
        rows.append((label, summary.frames_per_s, summary.clips / summary.seconds, summary.seconds))
        print("row:", label, f"{summary.frames_per_s:.0f} frames/s", flush=True)
    return rows
