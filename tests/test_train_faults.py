"""A non-finite loss stops the run with a clear message, before the bad update, keeping the last good checkpoint."""
import pytest
import torch

import toxigs.train as train_module
from toxigs.models import load_model
from toxigs.train import NonFiniteError, TrainConfig, checkpoint_steps, is_finished, run


def test_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = train_module.ntp_loss

    def loss_that_breaks_at_step_5(model, batch):
        calls["n"] += 1
        loss = real_loss(model, batch)
        return loss * float("nan") if calls["n"] == 5 else loss  # one micro-batch per step

    monkeypatch.setattr(train_module, "ntp_loss", loss_that_breaks_at_step_5)
    config = TrainConfig(run_dir=str(tmp_path), method="finetune", steps=10, save_every=2, keep_checkpoints=5)
    with pytest.raises(NonFiniteError) as error:
        run(config, progress=False)
    message = str(error.value)
    assert "loss, grad_norm became non-finite at step 5 of finetune (loss=nan, grad_norm=nan)" in message
    assert f"the last good checkpoint is {config.path / 'checkpoints' / 'step-4'}" in message
    assert "Lower lr" in message
    assert checkpoint_steps(config.path) == [2, 4]
    assert not is_finished(config.path)
    assert len(train_module.read_metrics(config.path)) == 4  # the failed step logged nothing
    assert all(torch.isfinite(p).all() for p in load_model(str(config.path / "checkpoints" / "step-4")).parameters())
