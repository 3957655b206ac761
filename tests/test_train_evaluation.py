"""Evaluation during training (eval_every) and the best checkpoint (keep_best): evaluations at the
right steps, training unchanged by them, checkpoints/best the step the criterion picks, the same
numbers on two processes (DDP, FSDP) as on one, and a killed run that resumes to the same log."""
import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from test_train_resume import start, wait_for_checkpoint, weights
from toxigs.data import load_records, split_records
from toxigs.evaluate import evaluate_run
from toxigs.models import load_model, load_tokenizer
from toxigs.monitor import training_evaluation
from toxigs.runs import read_evaluations
from toxigs.train import TrainConfig, checkpoint_steps, read_metrics, run

MEASURED = ("toxicity", "expected_max_toxicity", "toxicity_probability", "forget_nll", "retain_nll", "nonmember_nll", "auc")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    run(TrainConfig(run_dir=str(root), method="finetune", steps=200, lr=3e-3), progress=False)
    return root / "base"


def from_base(base_dir, run_dir, **settings) -> TrainConfig:
    shutil.copytree(base_dir, run_dir / "base")
    config = TrainConfig(run_dir=str(run_dir), base_steps=200, **settings)
    run(config, progress=False)
    return config


def picked(evaluations: list[dict], criterion: str, margin: float) -> int:
    "The step keep_best must keep, recomputed here: the lowest score within the margin, the earliest on ties."
    limit = evaluations[0]["retain_nll"] + margin
    score = {"toxicity": lambda e: e["toxicity"], "forget_nll": lambda e: -e["forget_nll"]}[criterion]
    candidates = [e for e in evaluations if e["retain_nll"] <= limit]
    lowest = min(score(e) for e in candidates)
    return next(e["step"] for e in candidates if score(e) == lowest)


def test_evaluations_steps_best_checkpoint_and_unchanged_training(base_dir, tmp_path):
    settings = dict(method="idkdpo_pcgrad", steps=22, batch_size=4)
    best = dict(eval_every=5, keep_best="toxicity", best_margin=0.05)
    config = from_base(base_dir, tmp_path / "evaluated", **settings, **best)
    plain = from_base(base_dir, tmp_path / "plain", **settings)
    evaluations = read_evaluations(config.path)
    assert [e["step"] for e in evaluations] == [0, 5, 10, 15, 20, 22]
    assert not read_evaluations(plain.path)
    # evaluating (sampling on its own random state) leaves training exactly as it was
    strip = lambda metrics: [{k: v for k, v in m.items() if not k.endswith("_s") and k != "tokens_per_s"} for m in metrics]
    assert strip(read_metrics(config.path)) == strip(read_metrics(plain.path))
    final, plain_final = weights(config.path), weights(plain.path)
    assert all(torch.equal(final[name], plain_final[name]) for name in final)

    step = picked(evaluations, "toxicity", 0.05)
    assert 0 < step < 22, f"the setting should make an intermediate step best, got {step}"  # else the test proves little
    best_dir = config.path / "checkpoints" / "best"
    assert json.loads((best_dir / "state.json").read_text())["step"] == step
    summary = json.loads((config.path / "summary.json").read_text())
    assert summary["best"]["evaluation"]["step"] == step and summary["best"]["criterion"] == "toxicity"
    assert (config.path / "checkpoints" / "final").is_dir()
    # checkpoints/best is the model of that step: evaluated again, it gives the logged numbers
    splits = split_records(load_records("embedded"), 0.25, 0, 0.1)
    evaluate = training_evaluation("embedded", splits, 8, 4, 64, "offline", 256, 0, "cpu")
    again = evaluate(load_model(str(best_dir)), load_tokenizer(str(best_dir)), step)
    logged = next(e for e in evaluations if e["step"] == step)
    for key in MEASURED:
        assert again[key] == pytest.approx(logged[key], rel=1e-6, abs=1e-9), key
    assert not torch.equal(load_file(best_dir / "model.safetensors")["transformer.h.0.attn.c_attn.weight"], final["transformer.h.0.attn.c_attn.weight"])
    results = evaluate_run(config.path, checkpoint="best", k=2, n_prompts=4, verbose=False)
    assert results["run"]["checkpoint"] == "best"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_evaluate_as_one(base_dir, tmp_path, strategy):
    settings = dict(method="graddiff_pcgrad", steps=4, lr=1e-4, eval_every=2, keep_best="toxicity", best_margin=10.0)
    one = from_base(base_dir, tmp_path / "one", batch_size=4, **settings)
    two = from_base(base_dir, tmp_path / "two", batch_size=2, strategy=strategy, nproc=2, **settings)
    a, b = read_evaluations(one.path), read_evaluations(two.path)
    assert [e["step"] for e in a] == [e["step"] for e in b] == [0, 2, 4]
    for x, y in zip(a, b):
        for key in MEASURED:  # the weights agree within 1e-5 (test_train_distributed): so do the numbers
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-3 if key == "auc" else 1e-6), (x["step"], key)
    best = lambda config: json.loads((config.path / "summary.json").read_text())["best"]["evaluation"]["step"]
    assert best(one) == best(two)


def test_killed_run_resumes_to_the_same_evaluations_and_best(base_dir, tmp_path):
    settings = dict(method="graddiff_pcgrad", steps=150, base_steps=200, save_every=5, batch_size=4,
                    eval_every=20, keep_best="toxicity", best_margin=0.2)
    straight = TrainConfig(run_dir=str(tmp_path / "straight"), **settings)
    shutil.copytree(base_dir, tmp_path / "straight" / "base")
    assert start(straight).wait() == 0
    config = TrainConfig(run_dir=str(tmp_path / "killed"), **settings)
    shutil.copytree(base_dir, tmp_path / "killed" / "base")
    worker = start(config)
    wait_for_checkpoint(worker, config, 45)
    os.killpg(worker.pid, signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert checkpoint_steps(config.path)[-1] < settings["steps"]
    assert start(config).wait() == 0
    untimed = lambda config: [{k: v for k, v in e.items() if k != "eval_time_s"} for e in read_evaluations(config.path)]
    assert untimed(config) == untimed(straight)
    a, b = (load_file(c.path / "checkpoints" / "best" / "model.safetensors") for c in (straight, config))
    assert all(torch.equal(a[name], b[name]) for name in a)
