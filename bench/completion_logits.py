"""The loss on the completion columns only: forward + backward of the next-token loss of one ToxiGen batch when the
model computes logits for the completion columns (`logits_to_keep`, as `toxigs.objectives` asks) and when it computes
them for every column, timed alternately in one run and printed as a ratio.

The batch is left-padded (`toxigs.data.collate`), so the completions end in the last column and the kept columns are
the longest completion + 1. The saving grows with the vocabulary: the output projection and the cross-entropy are
what shrink.

    python bench/completion_logits.py                                    # Gemma 3 270M (pip install -e ".[gemma]"), CPU
    python bench/completion_logits.py --model runs/gemma --device cuda --batch-size 32
"""
import argparse
import random
import time

import torch

import toxigs.objectives as objectives
from toxigs.data import collate, load_records, tokenize_records
from toxigs.distributed import pick_device
from toxigs.models import load_model, load_tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m-offline")
    parser.add_argument("--data", default="../shared/data/toxigen/prompts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4, help="timed steps per mode, alternating")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model).to(device)
    random.seed(0)
    examples = tokenize_records(random.sample(load_records(args.data), args.batch_size), tokenizer, verbose=False).examples
    batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
    kept = batch["labels"].shape[1] - int((batch["labels"][:, 1:] != -100).any(0).int().argmax())
    print(f"{args.model} on {device} ({torch.get_num_threads()} CPU threads), vocabulary {model.get_output_embeddings().weight.shape[0]:,}; "
          f"batch {tuple(batch['input_ids'].shape)}, completion columns {kept}")

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda": torch.cuda.synchronize()
        started = time.perf_counter()
        objectives.ntp_loss(model, batch).backward()
        if device.type == "cuda": torch.cuda.synchronize()
        return time.perf_counter() - started

    accepts = objectives._accepts
    modes = {"completion columns": accepts, "every column": lambda m, argument: argument != "logits_to_keep" and accepts(m, argument)}
    step()  # warm-up
    times = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode, check in modes.items():
            objectives._accepts = check
            times[mode].append(step())
    objectives._accepts = accepts
    median = {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}
    for mode, t in times.items(): print(f"{mode}: median {median[mode]:.3f} s  ({', '.join(f'{x:.3f}' for x in t)})")
    print(f"every column / completion columns = {median['every column'] / median['completion columns']:.2f}x")


if __name__ == "__main__":
    main()
