"""Two "nodes" on 127.0.0.1 (two torchrun agents, --nnodes 2, one gloo process each, on the CPU): a node killed
mid-training leaves the survivor with one c3dnet line naming the last checkpoint; rerunning both nodes with
--resume ends bit-identical to a run never interrupted; torchrun's own --max-restarts resumes by itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import killpoint
from tests.engine_helpers import make_frame_dataset, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
# 12 videos, 2 clips per process per step: 3 iterations an epoch, 9 in all; a checkpoint every 2 iterations;
# dropout on, so that every rank's RNG state matters to an exact resume.
OVERRIDES = ("optim.epochs=3", "data.batch_size=2", "train.checkpoint_every=2", "model.dropout=0.5",
             "train.val_every=1")
# Rank 1 stops once its step at iteration 4 is done, before the step's loss is summed: rank 0 waits for it there,
# and the last checkpoint is iteration 4's (mid-epoch 2).
STOP = "c3dnet.engine.train:Step.__call__"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multinode")
    data = make_frame_dataset(root / "data", train_per_class=4, test_per_class=2)
    (root / "r.yaml").write_text(tiny_train_config(*OVERRIDES).to_yaml())
    return data, root / "r.yaml"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(topology: list[str], program: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *topology, *program]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _node(rank: int, port: int, program: list[str]) -> subprocess.Popen:
    return _torchrun(["--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr",
                      "127.0.0.1", "--master_port", str(port)], program)


def _train_args(config: Path, data: Path, work_dir: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--data", str(data), "--work-dir", str(work_dir), "--device", "cpu",
            "--json", *extra]


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _two_nodes(args: list[str]) -> tuple[str, str]:
    """Both nodes to the end; node 0's (stdout, stderr)."""
    port = _free_port()
    nodes = [_node(rank, port, ["-m", "c3dnet.cli", *args]) for rank in (0, 1)]
    outputs = [n.communicate(timeout=240) for n in nodes]
    for n, (_, err) in zip(nodes, outputs):
        assert n.returncode == 0, err[-3000:]
    return outputs[0]


def _weights_equal(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


def _records(work_dir: Path) -> list[dict]:
    lines = (work_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("clips_per_s", "data_wait")} for line in lines]


@pytest.mark.slow
def test_a_dead_node_is_one_line_and_a_two_node_resume_is_exact(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, config = setup
    work = tmp_path / "resumed"
    args = _train_args(config, data, work)
    marker = tmp_path / "rank1_stopped"
    port = _free_port()
    survivor = _node(0, port, ["-m", "c3dnet.cli", *args])
    doomed = _node(1, port, ["--no-python", *killpoint.child_command(args, STOP, "args[3] >= 4", marker)])
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert survivor.poll() is None and doomed.poll() is None, doomed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "rank 1 never reached its stop"
        time.sleep(0.02)
    for pid in [doomed.pid, *_children(doomed.pid)]:  # the whole node: its torchrun agent and its worker
        os.kill(pid, signal.SIGKILL)
    doomed.wait(timeout=60)
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode != 0

    errors = [line for line in err.splitlines() if line.startswith("c3d train: error:")]
    assert len(errors) == 1, err[-3000:]
    # gloo's first sentence in the brackets: "Connection reset by peer", "Read error ...", as the timing falls
    assert errors[0].startswith("c3d train: error: rank 0 of 2 lost contact with the other processes of the run (")
    assert errors[0].endswith(
        "a process or node has died, so every process stops. Rerun every node with the same torchrun topology "
        "(--nnodes, --nproc_per_node) and the same command plus --resume; the last checkpoint is "
        f"{work / 'last.state.pt'} (iteration 4: epoch 2/3, 1 of its 3 iterations done)")
    # Nothing of gloo's own report or of the worker's traceback; what follows is torchrun's summary of its child.
    assert "GLHF" not in err and "gloo" not in err.lower() and "DistBackendError" not in err
    assert not [line for line in err.splitlines() if line.strip().startswith("File ") and "c3dnet" in line]

    out, resumed_err = _two_nodes(_train_args(config, data, work, "--resume"))
    assert f"resumed from {work / 'last.state.pt'} in epoch 2/3, 1 of its 3 iterations done (iteration 4 of 9)" \
        in resumed_err
    assert json.loads(out.strip().splitlines()[-1])["iterations"] == 9
    _two_nodes(_train_args(config, data, tmp_path / "straight"))
    _weights_equal(work / "last.safetensors", tmp_path / "straight" / "last.safetensors")
    assert _records(work) == _records(tmp_path / "straight")  # the epoch means too: the sums are in the state
    assert len([r for r in _records(work) if r["kind"] == "epoch"]) == 3


@pytest.mark.slow
def test_torchrun_restarts_resume_from_the_last_checkpoint(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """--max-restarts: torchrun starts the processes again with the same command line; they resume from
    last.state.pt instead of refusing the work dir, and end with the weights of a run never interrupted."""
    data, config = setup
    work = tmp_path / "restarted"
    args = _train_args(config, data, work)
    marker = tmp_path / "rank1_stopped"
    first_attempt_rank1 = ("__import__('os').environ['RANK'] == '1' and "
                           "__import__('os').environ['TORCHELASTIC_RESTART_COUNT'] == '0' and args[3] >= 4")
    run = _torchrun(["--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "--monitor-interval", "0.1"],
                    ["--no-python", *killpoint.child_command(args, STOP, first_attempt_rank1, marker)])
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rank1 = [pid for pid in _children(run.pid) if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
    os.kill(rank1[0], signal.SIGKILL)  # a crashed process; its torchrun agent lives on and restarts the run
    out, err = run.communicate(timeout=240)
    assert run.returncode == 0, err[-3000:]
    assert f"torchrun restart 1: resuming from {work / 'last.state.pt'}" in err
    assert json.loads(out.strip().splitlines()[-1])["iterations"] == 9
    straight = tmp_path / "straight"
    _two_nodes(_train_args(config, data, straight))
    _weights_equal(work / "last.safetensors", straight / "last.safetensors")
