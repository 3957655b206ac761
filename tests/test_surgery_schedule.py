"""surgery_every='micro_batch' combines each micro-batch's two gradients and sums the updates: with one
micro-batch per step it is the per-step rule exactly; with several it is another algorithm."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from toxigs.train import TrainConfig, read_metrics, run

SETTINGS = dict(method="graddiff_pcgrad", steps=3, base_steps=10, lr=1e-3, batch_size=2)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    run(TrainConfig(run_dir=str(root), method="finetune", steps=SETTINGS["base_steps"]), progress=False)
    return root / "base"


def trained(base_dir, run_dir, **overrides):
    shutil.copytree(base_dir, run_dir / "base")
    config = TrainConfig(run_dir=str(run_dir), **SETTINGS, **overrides)
    run(config, progress=False)
    return load_file(config.path / "checkpoints" / "final" / "model.safetensors"), read_metrics(config.path)


def test_one_micro_batch_is_the_step_rule(base_dir, tmp_path):
    step, step_metrics = trained(base_dir, tmp_path / "step", grad_accum=1)
    micro, micro_metrics = trained(base_dir, tmp_path / "micro", grad_accum=1, surgery_every="micro_batch")
    assert step.keys() == micro.keys()
    for name in step:
        assert torch.equal(step[name], micro[name]), name
    for a, b in zip(step_metrics, micro_metrics):
        assert a["cosine"] == b["cosine"] and a["forget_coef"] == b["forget_coef"]


def test_several_micro_batches_are_another_algorithm(base_dir, tmp_path):
    step, step_metrics = trained(base_dir, tmp_path / "step", grad_accum=2)
    micro, micro_metrics = trained(base_dir, tmp_path / "micro", grad_accum=2, surgery_every="micro_batch")
    # the same data and losses on the first step (the same weights), a different update
    assert step_metrics[0]["forget_loss"] == pytest.approx(micro_metrics[0]["forget_loss"], rel=1e-6)
    assert step_metrics[0]["cosine"] != micro_metrics[0]["cosine"]  # micro-batch mean vs the step's
    assert any(not torch.equal(step[name], micro[name]) for name in step)


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="surgery_every"):
        TrainConfig(surgery_every="epoch")
