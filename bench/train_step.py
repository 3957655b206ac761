"""Unlearning step time of every surgery rule, as a ratio to `sum` measured in the same run.

Runs the real training loop (`toxigs.train.train`) on a GPT-2-124M-shaped model (random weights,
the GPT-2 config: 12 layers, width 768, vocabulary 50,257) and reads each step's wall time from
`metrics.jsonl`, skipping warm-up steps. It also times a step written in the straightforward
reference style (surgery per micro-batch, `.item()` branches, cloned gradients) and prints the
speed-up of the toxigs step over it.

    python bench/train_step.py --device cpu --steps 3 --warmup 1            # a few minutes on 2 cores
    python bench/train_step.py --device cuda --steps 20 --warmup 5          # bf16 autocast on GPU
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from toxigs.data import collate, collate_pairs, embedded_records
from toxigs.models import load_tokenizer
from toxigs.objectives import Objective
from toxigs.surgery import RULES
from toxigs.train import TrainConfig, _autocast, prepare_data, read_metrics, train, write_json_atomic


def write_long_records(path: Path, prompt_sentences: int) -> None:
    "Demo records whose prompts chain several demo prompts, so sequences have a realistic length."
    records = embedded_records()
    prompts = [r["prompt"] for r in records]
    with path.open("w") as f:
        for i, r in enumerate(records):
            context = ". ".join(prompts[(i + j) % len(prompts)] for j in range(prompt_sentences - 1))
            f.write(json.dumps({"prompt": f"{context}. {r['prompt']}", "generation": r["generation"], "label": r["label"]}) + "\n")


def write_base(run_dir: Path) -> None:
    "A finished 'base' run holding a randomly initialised GPT-2-124M, so unlearning starts from it."
    final = run_dir / "base" / "checkpoints" / "final"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).save_pretrained(final)
    load_tokenizer("embedded").save_pretrained(final)
    write_json_atomic(final / "state.json", {"step": 0, "streams": {}})


def reference_style_step(model, reference, objective, data, config, device, optimizer, pad) -> float:
    "One step the straightforward way: per micro-batch, clone both gradients, loop over tensors, branch on .item()."
    started = time.perf_counter()
    params = [p for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    total = [torch.zeros_like(p) for p in params]
    for micro in range(config.grad_accum):
        pairs = collate_pairs(data.forget[micro * config.batch_size:(micro + 1) * config.batch_size], pad)
        retain_batch = collate(data.retain[micro * config.batch_size:(micro + 1) * config.batch_size], pad)
        to = lambda b: {k: (to(v) if isinstance(v, dict) else v.to(device)) for k, v in b.items()}
        with _autocast(config, device): loss = objective.forget_loss(model, to(pairs), reference)
        loss.backward()
        forget = [p.grad.clone() for p in params]
        optimizer.zero_grad(set_to_none=True)
        with _autocast(config, device): loss = objective.retain_loss(model, to(retain_batch))
        loss.backward()
        retain_grads = [p.grad.clone() for p in params]
        optimizer.zero_grad(set_to_none=True)
        dot = sum((a * b).sum().item() for a, b in zip(forget, retain_grads))
        if dot < 0:
            forget_sq = sum((a * a).sum().item() for a in forget)
            retain_sq = sum((b * b).sum().item() for b in retain_grads)
            forget, retain_grads = ([a - dot / retain_sq * b for a, b in zip(forget, retain_grads)],
                                    [b - dot / forget_sq * a for a, b in zip(forget, retain_grads)])
        for t, a, b in zip(total, forget, retain_grads): t += (a + b) / config.grad_accum
    for p, t in zip(params, total): p.grad = t
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    if device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--objective", default="idkdpo")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per rule")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per rule")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--prompt-sentences", type=int, default=6, help="demo prompts chained per example (~20 tokens each)")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_long_records(root / "records.jsonl", args.prompt_sentences)
        write_base(root / "runs")
        common = dict(run_dir=str(root / "runs"), data=str(root / "records.jsonl"), steps=args.warmup + args.steps,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, device=args.device, lr=1e-5)
        print(f"GPT-2-124M shapes, {args.objective}, batch {args.batch_size} x {args.grad_accum} micro-batches per task, "
              f"{args.device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
              f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}")
        times, tokens = {}, {}
        for rule in RULES:
            method = args.objective if rule == "sum" else f"{args.objective}_{rule}"
            path = train(TrainConfig(method=method, **common), progress=False)
            timed = read_metrics(path)[args.warmup:]
            times[rule] = statistics.median(m["step_time_s"] for m in timed)
            tokens[rule] = statistics.median(m["tokens_per_s"] for m in timed)
        print(f"{'rule':<16}{'step ms':>10}{'x sum':>8}{'tokens/s':>12}")
        for rule in RULES:
            print(f"{rule:<16}{times[rule] * 1e3:>10.1f}{times[rule] / times['sum']:>8.3f}{tokens[rule]:>12.0f}")

        # the reference style, on the same model, data and precision
        config = TrainConfig(method=f"{args.objective}_pcgrad", **common)
        base = str(root / "runs" / "base" / "checkpoints" / "final")
        model = GPT2LMHeadModel.from_pretrained(base).to(device).eval()
        reference = GPT2LMHeadModel.from_pretrained(base).to(device).eval().requires_grad_(False)
        data = prepare_data(config, load_tokenizer(base), verbose=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        objective = Objective(args.objective)
        ref_times = [reference_style_step(model, reference, objective, data, config, device, optimizer, 0) for _ in range(args.warmup + args.steps)]
        ref_time = statistics.median(ref_times[args.warmup:])
        print(f"{'reference-style pcgrad step':<28}{ref_time * 1e3:>10.1f} ms; toxigs pcgrad step is {ref_time / times['pcgrad']:.2f}x faster")


if __name__ == "__main__":
    main()
