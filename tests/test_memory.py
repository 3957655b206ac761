"""Bigger models on the same device: LoRA trains the adapters only and its merged final checkpoint loads
without peft; gradient checkpointing (with LoRA too) trains as without; two DDP processes train LoRA as one;
the cached reference gives the weights of the reference computed on every step."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from toxigs.data import collate, embedded_records, tokenize_records
from toxigs.memory import add_adapters, load_adapter_weights, merged_state_dict
from toxigs.models import load_model, load_tokenizer
from toxigs.train import TrainConfig, run

pytest.importorskip("peft")
LORA = dict(method="idkdpo_pcgrad", steps=6, batch_size=4, lora_rank=4, lora_alpha=8.0, lr=1e-2)


def small_model(kind: str, folder) -> str:
    "A small random model of another architecture, saved with the embedded tokenizer."
    tokenizer = load_tokenizer("embedded")
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.eos_token_id)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, sliding_window=4))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    "A fine-tuned base of each architecture: embedded (GPT-2, Conv1D layers), Llama, Gemma 3."
    root, found = tmp_path_factory.mktemp("bases"), {}
    for kind in ("embedded", "llama", "gemma3"):
        model = "embedded" if kind == "embedded" else small_model(kind, root / f"{kind}-model")
        config = TrainConfig(run_dir=str(root / kind), method="finetune", model=model, steps=60, lr=3e-3)
        run(config, progress=False)
        found[kind] = (model, root / kind / "base")
    return found


def from_base(bases, kind, run_dir, **settings) -> TrainConfig:
    model, base = bases[kind]
    shutil.copytree(base, run_dir / "base")
    config = TrainConfig(run_dir=str(run_dir), model=model, base_steps=60, base_lr=3e-3, **settings)
    run(config, progress=False)
    return config


def final(config) -> dict:
    return load_file(config.path / "checkpoints" / "final" / "model.safetensors")


def adapter(config) -> dict:
    return load_file(config.path / "checkpoints" / "final" / "adapter" / "adapter_model.safetensors")


def batch(tokenizer) -> dict:
    examples = tokenize_records(embedded_records()[:6], tokenizer, verbose=False).examples
    return {k: v for k, v in collate(examples, tokenizer.pad_token_id).items() if k != "labels"}


LOGITS = """import sys, torch
sys.modules["peft"] = None  # the merged checkpoint must load without peft
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(**inputs).logits, sys.argv[3])
"""


@pytest.mark.parametrize("kind", ["embedded", "llama", "gemma3"])
def test_lora_trains_only_the_adapters_and_the_merged_model_loads_without_peft(bases, tmp_path, kind):
    config = from_base(bases, kind, tmp_path, **LORA)
    base_dir = bases[kind][1] / "checkpoints" / "final"
    trained = adapter(config)
    assert all(".lora_" in name for name in trained)
    assert any("lora_B" in name and value.abs().max() > 0 for name, value in trained.items()), "adapters stayed at zero"
    # every base weight is as it was: the merged model is the base plus the saved adapters' update, exactly
    adapted = add_adapters(load_model(str(base_dir)), 4, 8.0)
    load_adapter_weights(adapted, config.path / "checkpoints" / "final")
    expected, merged = merged_state_dict(adapted), final(config)
    for name, value in merged.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    base = load_file(base_dir / "model.safetensors")
    assert any(not torch.equal(merged[name], base[name]) for name in base), "the merged model is the base"
    # the merged checkpoint, loaded in a process without peft, scores as the adapter model
    inputs = batch(load_tokenizer(str(base_dir)))
    torch.save(inputs, tmp_path / "inputs.pt")
    out = subprocess.run([sys.executable, "-c", LOGITS, str(config.path / "checkpoints" / "final"),
                          str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), adapted.eval()(**inputs).logits, rtol=1e-5, atol=1e-5)
    summary = json.loads((config.path / "summary.json").read_text())
    assert summary["trainable_parameters"] == sum(v.numel() for v in trained.values())
    assert summary["peak_rss_gib"] > 0


def test_gradient_checkpointing_trains_as_without_it_with_lora_and_without(bases, tmp_path):
    for settings, weights in ((LORA, adapter), (dict(LORA, lora_rank=0), final)):
        plain = from_base(bases, "llama", tmp_path / f"plain{settings['lora_rank']}", **settings)
        checkpointed = from_base(bases, "llama", tmp_path / f"gc{settings['lora_rank']}", gradient_checkpointing=True,
                                 **settings)
        a, b = weights(plain), weights(checkpointed)
        if settings["lora_rank"]:
            assert any("lora_B" in n and v.abs().max() > 0 for n, v in b.items()), "checkpointing left the adapters at zero"
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_two_ddp_processes_train_lora_as_one(bases, tmp_path):
    settings = dict(LORA, lr=1e-4)
    one = from_base(bases, "embedded", tmp_path / "one", **settings)
    two = from_base(bases, "embedded", tmp_path / "two", **dict(settings, batch_size=2), strategy="ddp", nproc=2)
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", ["idkdpo_pcgrad", "npo"])
def test_the_cached_reference_trains_as_the_reference_on_every_step(bases, tmp_path, method):
    settings = dict(method=method, steps=8, batch_size=4, lr=1e-4)
    cached = from_base(bases, "embedded", tmp_path / "cached", **settings)
    live = from_base(bases, "embedded", tmp_path / "live", cache_reference=False, **settings)
    assert (cached.path / "reference_logprobs.safetensors").is_file()
    assert not (live.path / "reference_logprobs.safetensors").exists()
    a, b = final(cached), final(live)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)
