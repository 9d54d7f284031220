"""Training under torchrun: 2 CPU processes (gloo), only rank 0 writes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from aigdetect.checkpoint import load_model
from aigdetect.runtime import Distributed

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_distributed_context_from_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = Distributed.from_environment()
    assert (alone.rank, alone.world_size, alone.enabled, alone.is_main) == (0, 1, False, True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    worker = Distributed.from_environment()
    assert (worker.rank, worker.local_rank, worker.world_size) == (3, 1, 4)
    assert worker.enabled and not worker.is_main


@pytest.mark.slow
def test_two_process_training_on_cpu(session_photo_folder, tmp_path, subprocess_env):
    output = tmp_path / "ddp.pt"
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        subprocess_env.pop(name, None)
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "aigdetect", "train", str(session_photo_folder), "-o", str(output),
        "--max-steps", "2", "--epochs", "1", "--batch-size", "2", "--patches", "2",
        "--workers", "0", "--device", "cpu",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180,
                               env=subprocess_env, cwd=tmp_path)
    message = f"stdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-3000:]}"
    assert completed.returncode == 0, message
    assert output.is_file(), message
    output_text = " ".join(completed.stderr.split())
    assert "2 process(es)" in output_text, message
    # only rank 0 prints and writes: one "Saved" line, one log record
    assert output_text.count("Saved ") == 1, message
    records = output.with_name("ddp.pt.log.jsonl").read_text().splitlines()
    assert len(records) == 1
    assert json.loads(records[0])["step"] == 2
    _, meta = load_model(output)
    assert meta.step == 2
    assert meta.training["train_photos"] == 9  # 3 of 12 photos (one camera) held out
    assert not list(tmp_path.glob(".*.tmp"))


AGREE = """
from aigdetect.runtime import Distributed
dist = Distributed.from_environment()
device = dist.start("cpu")
print(f"rank {dist.rank}: {dist.any_rank(dist.rank == 1, device)} "
      f"{dist.any_rank(False, device)}", flush=True)
dist.stop()
"""


def test_a_stop_decided_by_one_rank_is_taken_by_all(tmp_path, subprocess_env):
    """--max-minutes reads each rank's own clock: one rank past the limit must stop
    every rank, or the others wait for ever on its gradients."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        subprocess_env.pop(name, None)
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)],
        capture_output=True, text=True, timeout=120, env=subprocess_env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # the two ranks share one stdout: their lines may run together
    answers = sorted(re.findall(r"rank \d: (?:True|False) (?:True|False)", completed.stdout))
    assert answers == ["rank 0: True False", "rank 1: True False"], completed.stdout
    assert Distributed().any_rank(True, None) and not Distributed().any_rank(False, None)
