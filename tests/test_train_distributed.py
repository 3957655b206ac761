"""Two CPU processes (gloo) with DDP or FSDP end with the parameters of one process on the same global batch."""
import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from toxigs.models import load_model
from toxigs.surgery import is_elementwise
from toxigs.train import TrainConfig, final_checkpoint, parse_method, read_metrics, run

# Adam divides each gradient element by its running RMS, so an element whose gradient is rounding noise
# (a sum taken in another order) still moves by about lr: the learning rate sets the scale of
# legitimate fp32 differences, and 1e-4 keeps them an order below the 1e-5 tolerance.
SETTINGS = dict(steps=4, base_steps=10, grad_accum=2, lr=1e-4)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    run(TrainConfig(run_dir=str(root), method="finetune", steps=SETTINGS["base_steps"], lr=3e-3), progress=False)
    return root / "base"


def final_weights(run_path) -> dict:
    "The trained parameters as a user loads them (tied weights appear once)."
    return {name: p.detach() for name, p in load_model(str(final_checkpoint(run_path))).named_parameters()}


def run_from_base(base_dir, run_dir, **overrides) -> dict:
    shutil.copytree(base_dir, run_dir / "base")
    config = TrainConfig(run_dir=str(run_dir), **SETTINGS, **overrides)
    run(config, progress=False)
    return final_weights(config.path), read_metrics(config.path), json.loads((config.path / "config.json").read_text())["layers"]


# a projection rule, an element-wise one, a Gramian rule of the literature, a stateful one, and one whose
# state is gradient-sized (sharded with the gradients under FSDP)
@pytest.mark.parametrize("method", ["idkdpo_pcgrad", "graddiff_sago", "graddiff_cagrad", "idkdpo_gradvac", "graddiff_gru"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(base_dir, tmp_path, method, strategy):
    one, one_metrics, one_layers = run_from_base(base_dir, tmp_path / "one", method=method, batch_size=4)
    two, two_metrics, two_layers = run_from_base(base_dir, tmp_path / "two", method=method, batch_size=2, strategy=strategy, nproc=2)
    assert one.keys() == two.keys()
    # the per-layer statistics (from sharded tables under fsdp) are those of one process
    assert one_layers == two_layers and len(one_layers) == len(one_metrics[0]["layer_cosine"])
    # (an element whose gradient is rounding noise may change sign with the summation order: a few tens of a block's
    # 10^5 elements did, with one or two CPU threads, so conflict shares get 1e-3; a wrong reduction misses by far more)
    for a, b in zip(one_metrics, two_metrics):
        torch.testing.assert_close(torch.tensor(b["layer_cosine"]), torch.tensor(a["layer_cosine"]), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(b["layer_conflict"]), torch.tensor(a["layer_conflict"]), rtol=0, atol=1e-3)
        # the rule's weights (and state) on every step; an element-wise rule's are its conflict share's
        coef_atol = 1e-3 if is_elementwise(parse_method(method)[1]) else 1e-6
        for key in ("forget_coef", "retain_coef"):
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=coef_atol)
    start = final_weights(base_dir)
    for name in one:
        assert not torch.equal(one[name], start[name]), f"{name} did not train"
    # SAGO decides each element by the sign of g1_i * g2_i. Where one task's gradient is at rounding-noise level (a few
    # in 10^6 elements, by chance) the summation order can flip that decision, and Adam turns the flip into a move of
    # about lr a step: 1 element of 534,400 did (1.2e-4) with left-padded batches. Element-wise rules may have such
    # elements, at most 1 in 10^5 and each within lr per step; every other element, and every element of the projection
    # rules, agrees within 1e-5.
    off = {name: int(((two[name] - one[name]).abs() > 1e-5).sum()) for name in one}
    elements = sum(p.numel() for p in one.values())
    allowed = elements // 100_000 if is_elementwise(parse_method(method)[1]) else 0
    assert sum(off.values()) <= allowed, {name: count for name, count in off.items() if count}
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=SETTINGS["lr"] * SETTINGS["steps"], msg=lambda m: f"{name}: {m}")


NODE = ("import sys, json; from toxigs.train import TrainConfig, run; "
        "run(TrainConfig(**json.loads(sys.argv[1])), progress=False)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_match_one_process(base_dir, tmp_path):
    "torchrun across 2 'nodes' (nnodes 2, node_rank 0 and 1, one process each, gloo) = one process."
    one, one_metrics, _ = run_from_base(base_dir, tmp_path / "one", method="idkdpo_pcgrad", batch_size=4)
    shutil.copytree(base_dir, tmp_path / "nodes" / "base")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-c", NODE, json.dumps(
        dict(run_dir=str(tmp_path / "nodes"), method="idkdpo_pcgrad", batch_size=2, strategy="ddp", nnodes=2,
             node_rank=rank, rdzv_endpoint=endpoint, **SETTINGS))], stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    path = tmp_path / "nodes" / "idkdpo_pcgrad-seed0"
    assert json.loads((path / "summary.json").read_text())["world_size"] == 2
    two = final_weights(path)
    for a, b in zip(one_metrics, read_metrics(path)):
        torch.testing.assert_close(b["forget_loss"], a["forget_loss"], rtol=1e-5, atol=1e-6)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
