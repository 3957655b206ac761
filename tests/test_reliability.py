"""Bad input is refused before any work, data is read verbatim, damaged files are named (and resume falls
back to an intact checkpoint), one writer at a time, and no loaded scorer checkpoint runs code."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import toxigs.train as train_module
from toxigs.data import load_records
from toxigs.evaluate import UnsafeCheckpointError, evaluate_run, load_scorer
from toxigs.runs import CheckpointError, RunLockedError, checkpoint_steps, final_checkpoint, read_metrics, step_checkpoint
from toxigs.train import TrainConfig, run

SMALL = dict(method="graddiff_pcgrad", steps=8, base_steps=10, save_every=2, keep_checkpoints=5, batch_size=4)


def final_weights(path: Path) -> dict:
    return load_file(final_checkpoint(path) / "model.safetensors")


def zero_second_half(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))


def crash_at_step(monkeypatch, crash_step: int):
    "Make the next run die (as a process would) during `crash_step`, after the checkpoints before it."
    real = train_module.refuse_non_finite

    def refuse(record, run_, step, last_good):
        if step == crash_step: raise KeyboardInterrupt(f"simulated crash at step {step}")
        return real(record, run_, step, last_good)

    monkeypatch.setattr(train_module, "refuse_non_finite", refuse)


@pytest.mark.parametrize("field, value", [("forget_weight", -1.0), ("lr", -1e-3), ("beta", float("nan")), ("save_every", -1),
                                          ("warmup_ratio", 1.5), ("warmup_ratio", -0.1), ("max_grad_norm", -1.0)])
def test_bad_values_are_refused_when_the_config_is_built(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"^{field} must be a"):
        TrainConfig(run_dir=str(tmp_path), **{field: value})
    assert not any(tmp_path.iterdir())  # nothing was fine-tuned or written


def test_combinations_this_machine_cannot_run_are_refused_up_front():
    if torch.cuda.is_available(): pytest.skip("checks the CPU-only refusals")
    with pytest.raises(ValueError, match="strategy 'fsdp' shards the model over processes, but nproc=1 starts one"):
        TrainConfig(strategy="fsdp", nproc=1)
    with pytest.raises(ValueError, match="this machine has no CUDA GPU"):
        TrainConfig(device="cuda")
    with pytest.raises(ValueError, match="stride must be a whole number >= 1, got 0"):
        evaluate_run("no/such/run", stride=0)


def test_a_finished_run_given_by_a_relative_path_is_the_same_run(tmp_path, monkeypatch, capsys):
    config = TrainConfig(run_dir=str(tmp_path / "exp"), **SMALL)
    run(config, progress=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run(replace(config, run_dir="exp"), progress=False) == Path("exp") / config.path.name
    assert "is finished; nothing to do" in capsys.readouterr().out


def test_data_is_read_verbatim_and_errors_name_file_and_line(tmp_path):
    rows = [{"prompt": "007", "generation": "1e5", "label": 1}, {"prompt": "hi", "generation": "there", "label": 0}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.csv").write_text('prompt,generation,label\n007,1e5,1\n"hi, you",there,0\n')
    assert [r["prompt"] for r in load_records(str(tmp_path / "r.jsonl"))] == ["007", "hi"]
    assert [(r["prompt"], r["generation"]) for r in load_records(str(tmp_path / "r.csv"))] == [("007", "1e5"), ("hi, you", "there")]
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n" + '{"prompt": "a", "generation": "b" "label": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 3 is not valid JSON"):
        load_records(str(tmp_path / "bad.jsonl"))
    (tmp_path / "null.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "prompt": None}) + "\n")
    with pytest.raises(ValueError, match=r"null\.jsonl line 2: prompt is missing \(null\)"):
        load_records(str(tmp_path / "null.jsonl"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty: it has no header row"):
        load_records(str(tmp_path / "empty.csv"))


def test_a_zeroed_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path, monkeypatch, capsys):
    straight = run(TrainConfig(run_dir=str(tmp_path / "straight"), **SMALL), progress=False)
    config = TrainConfig(run_dir=str(tmp_path / "crashed"), **SMALL)
    run(config.base(), progress=False)  # the crash targets the unlearning run, not the base
    crash_at_step(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False)
    monkeypatch.undo()
    assert checkpoint_steps(config.path) == [2, 4, 6]
    zero_second_half(step_checkpoint(config.path, 6) / "model.safetensors")
    with open(config.path / "metrics.jsonl", "a") as f: f.write('{"step": 7, "forget_lo')  # torn by the crash
    capsys.readouterr()
    run(config, progress=False)
    out = capsys.readouterr().out
    assert "step-6 cannot be trusted (model.safetensors does not match its checksum" in out
    assert "resuming from step-4" in out
    assert (config.path / "checkpoints" / "step-6.damaged").is_dir()  # kept for inspection
    a, b = final_weights(straight), final_weights(config.path)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [m["step"] for m in read_metrics(config.path)] == list(range(1, SMALL["steps"] + 1))


def test_truncated_checkpoints_are_named_and_resume_stops_when_none_is_intact(tmp_path, monkeypatch):
    config = TrainConfig(run_dir=str(tmp_path), **SMALL)
    run(config.base(), progress=False)
    crash_at_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False)
    monkeypatch.undo()
    for step in (2, 4):
        weights = step_checkpoint(config.path, step) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"no checkpoint of .* can be trusted \(step-4: model.safetensors has 1,000 of its .* bytes"):
        run(config, progress=False)
    assert checkpoint_steps(config.path) == [2, 4]  # nothing was moved or overwritten


def test_a_damaged_base_or_final_checkpoint_is_refused_naming_the_file(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path), **SMALL)
    base = run(config.base(), progress=False)
    zero_second_half(final_checkpoint(base) / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"base/checkpoints/final cannot be trusted: model.safetensors does not match its checksum \(its bytes changed\); "
                                              r"delete .*base to fine-tune the base again"):
        train_module.train(config, progress=False)
    (tmp_path / "base" / "config.json").write_text('{"method": "finetune", "steps"')  # a torn config
    with pytest.raises(ValueError, match=r"base/config.json is not valid JSON \(line 1, column 31"):
        evaluate_run(base, k=1, device="cpu", verbose=False)


def test_a_second_writer_is_refused_and_a_killed_ones_lock_does_not_block(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path), **SMALL)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from toxigs.runs import RunLock; "
                               "lock = RunLock(sys.argv[1], 'finetune training').__enter__(); print('held', flush=True); time.sleep(600)",
                               str(config.base().path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"is in use: finetune training by process {holder.pid} on "):
            run(config, progress=False)
        assert not (config.base().path / "metrics.jsonl").exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (config.base().path / ".lock").exists()  # the killed holder's lock file is left behind ...
    run(config, progress=False)  # ... and does not block
    assert len(read_metrics(config.path)) == SMALL["steps"]


class Planted:
    "What a downloaded checkpoint could hold: unpickling it runs a command."
    def __init__(self, marker: Path): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_a_planted_scorer_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "config": {}, "payload": Planted(marker)}, tmp_path / "planted.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="refusing the Detoxify checkpoint .*planted.ckpt"):
        load_scorer(f"detoxify:{tmp_path / 'planted.ckpt'}")
    assert not marker.exists()
    torch.load(tmp_path / "planted.ckpt", weights_only=False)  # what detoxify itself does with the file ...
    assert marker.exists()  # ... runs the planted code: the threat is real


def test_the_sweep_checks_every_setting_before_it_trains(tmp_path):
    sweep = [sys.executable, "-c", "from toxigs.sweep import main; main()"]  # what toxigs-sweep runs
    for bad in (["--k", "0"], ["--methods", "idkdpo", "idkdpo_pcgard"], ["--warmup-ratio", "1.5"]):
        out = subprocess.run([*sweep, "--run-dir", str(tmp_path), *bad], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0
        assert ("k must be a whole number" in out.stderr or "unknown method 'idkdpo_pcgard'" in out.stderr
                or "warmup_ratio must be a number in [0, 1)" in out.stderr), out.stderr[-2000:]
        assert "Traceback" not in out.stderr and out.stderr.startswith("toxigs-sweep: "), out.stderr[-2000:]
        assert not any(tmp_path.iterdir()), bad  # nothing was trained
