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
    """Run `config` in a fresh process (both runs in the same environment, so the CPU kernels match),
    in its own session: a kill of the group also stops its torchrun workers."""
    return subprocess.Popen([sys.executable, "-c", RUN, json.dumps(vars(config))], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)


def weights(run_path: Path) -> dict:
    return load_file(run_path / "checkpoints" / "final" / "model.safetensors")


def wait_for_checkpoint(worker, config: TrainConfig, step: int):
    deadline = time.time() + 240
    while not checkpoint_steps(config.path) or checkpoint_steps(config.path)[-1] < step:
        assert worker.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)


# pcgrad keeps no state between steps; gradvac keeps its target cosine (a tensor on the device) and
# rlw its generator (on the host), gru its gradient-sized memory: each must come back from the checkpoint for the weights to match
# (and LoRA idkDPO: its adapters come back from the checkpoint, its cached reference from the run directory)
@pytest.mark.parametrize("method,extra", [("graddiff_pcgrad", {}), ("graddiff_gradvac", {}), ("graddiff_rlw", {}),
                                          ("graddiff_gru", {}), ("idkdpo_pcgrad", {"lora_rank": 4})])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, method, extra):
    settings = dict(method=method, steps=150, base_steps=20, save_every=5, batch_size=4, **extra)
    straight = TrainConfig(run_dir=str(tmp_path / "straight"), **settings)
    assert start(straight).wait() == 0

    config = TrainConfig(run_dir=str(tmp_path / "killed"), **settings)
    assert start(config.base()).wait() == 0  # the kill targets the unlearning run, not the base
    worker = start(config)
    wait_for_checkpoint(worker, config, 10)
    os.killpg(worker.pid, signal.SIGKILL)  # the process and any workers it launched
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


def test_fsdp_sigkill_then_resume_matches_uninterrupted(tmp_path):
    "Two FSDP workers killed mid-run: gru's memory shards, gathered into the checkpoint, come back cut alike."
    settings = dict(method="graddiff_gru", steps=40, base_steps=10, save_every=4, batch_size=2, strategy="fsdp", nproc=2,
                    device="cpu")
    straight = TrainConfig(run_dir=str(tmp_path / "straight"), **settings)
    assert start(straight).wait() == 0
    config = TrainConfig(run_dir=str(tmp_path / "killed"), **settings)
    assert start(config.base()).wait() == 0
    worker = start(config)
    wait_for_checkpoint(worker, config, 8)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    assert not (config.path / "checkpoints" / "final").exists(), "the kill came after the run finished"
    killed_at = checkpoint_steps(config.path)[-1]
    assert killed_at < settings["steps"]
    trainer = torch.load(config.path / "checkpoints" / f"step-{killed_at}" / "trainer.pt", weights_only=True)
    memory = trainer["rule_state"]["memory"]
    assert [tuple(m.shape) for m in memory] == [tuple(w.shape) for w in weights_of_model(config)], "not gathered whole"
    assert start(config).wait() == 0
    a, b = weights(straight.path), weights(config.path)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def weights_of_model(config: TrainConfig) -> list:
    "The trainable parameters of the run's base model, in the order training sees them."
    from toxigs.models import load_model
    return [p for p in load_model(str(config.base().path / "checkpoints" / "final")).parameters() if p.requires_grad]
