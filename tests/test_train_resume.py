"""A run killed with SIGKILL mid-training and resumed ends with the same weights as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toxigs.train import TrainConfig, checkpoint_steps, read_metrics

RUN = "import json, sys; from toxigs.train import TrainConfig, run; run(TrainConfig(**json.loads(sys.argv[1])), progress=False)"


def start(config: TrainConfig) -> subprocess.Popen:
    "Run `config` in a fresh process (both runs in the same environment, so the CPU kernels match)."
    return subprocess.Popen([sys.executable, "-c", RUN, json.dumps(vars(config))], env={**os.environ, "OMP_NUM_THREADS": "1"})


def weights(run_path: Path) -> dict:
    return load_file(run_path / "checkpoints" / "final" / "model.safetensors")


# pcgrad keeps no state between steps; gradvac keeps its target cosine (a tensor on the device) and
# rlw its generator (on the host), gru its gradient-sized memory: each must come back from the checkpoint for the weights to match
@pytest.mark.parametrize("method", ["graddiff_pcgrad", "graddiff_gradvac", "graddiff_rlw", "graddiff_gru"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, method):
    settings = dict(method=method, steps=150, base_steps=20, save_every=5, batch_size=4)
    straight = TrainConfig(run_dir=str(tmp_path / "straight"), **settings)
    assert start(straight).wait() == 0

    config = TrainConfig(run_dir=str(tmp_path / "killed"), **settings)
    assert start(config.base()).wait() == 0  # the kill targets the unlearning run, not the base
    worker = start(config)
    deadline = time.time() + 240
    while not checkpoint_steps(config.path) or checkpoint_steps(config.path)[-1] < 10:
        assert worker.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    killed_at = checkpoint_steps(config.path)[-1]
    assert not (config.path / "checkpoints" / "final").exists(), "the kill came after the run finished"
    assert killed_at < settings["steps"]

    assert start(config).wait() == 0
    a, b = weights(straight.path), weights(config.path)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the metrics of the resumed run are those of the uninterrupted one, one line per step
    uninterrupted, resumed = read_metrics(straight.path), read_metrics(config.path)
    assert [m["step"] for m in resumed] == list(range(1, settings["steps"] + 1))
    for m1, m2 in zip(uninterrupted, resumed):
        assert m1["forget_loss"] == m2["forget_loss"] and m1["cosine"] == m2["cosine"], m1["step"]
        assert m1["forget_coef"] == m2["forget_coef"], m1["step"]  # the rule's state came back
