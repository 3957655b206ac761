"""Evaluation throughput: batched vs one-at-a-time generation (as a ratio measured in the same run),
and word-perplexity tokens per second.

Generation samples `k` continuations of each of `--prompts` evaluation prompts with
`toxigs.evaluate.generate_continuations`, once batched (left-padded, `--batch-size` prompts per
`generate` call, each expanded to k sequences, KV cache) and once one continuation per call (k=1,
one prompt); the one-at-a-time pass may time only the first `--single` continuations, as
throughput is per continuation. Word perplexity scores utility documents with rolling windows
(`toxigs.evaluate.word_perplexity`) and reports scored tokens per second.

Models: `embedded` (the demo model, ~0.5M parameters), `gpt2-shape` (random weights in the GPT-2
124M config with the real GPT-2 tokenizer from ../shared/assets/gpt2-tokenizer), or a folder
written by save_pretrained (e.g. a run's checkpoints/final). Random weights rarely emit
end-of-text, so every continuation runs to --max-new-tokens: the work is the same in both passes.

    python bench/evaluate.py                                              # embedded, CPU, seconds
    python bench/evaluate.py --model gpt2-shape --single 40               # a minute or two on 2 cores
    python bench/evaluate.py --model gpt2-shape --device cuda --prompts 32 --batch-size 32
"""
import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from toxigs.data import embedded_eval_prompts
from toxigs.distributed import pick_device
from toxigs.evaluate import generate_continuations, load_utility_documents, word_perplexity
from toxigs.models import load_model, load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"


def model_and_tokenizer(name: str):
    if name == "gpt2-shape":
        tokenizer = AutoTokenizer.from_pretrained(str(SHARED / "assets" / "gpt2-tokenizer"))
        tokenizer.pad_token = tokenizer.eos_token
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return GPT2LMHeadModel(GPT2Config()), tokenizer  # the GPT-2 124M config: 12 layers, width 768, 1,024 positions
    return load_model(name), load_tokenizer(name)


def timed(fn):
    if torch.cuda.is_available(): torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="embedded, gpt2-shape, or a save_pretrained folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--prompts", type=int, default=8, help="evaluation prompts")
    parser.add_argument("--k", type=int, default=25, help="continuations per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batched generate call")
    parser.add_argument("--single", type=int, default=0, help="continuations timed one at a time (0: all prompts x k)")
    parser.add_argument("--utility-text", default=None, help="embedded, wikitext or a file (default: the shared WikiText-2 test file)")
    parser.add_argument("--max-documents", type=int, default=2, help="utility documents scored")
    parser.add_argument("--max-length", type=int, default=1024, help="perplexity window (capped at the model's context)")
    parser.add_argument("--ppl-batch-size", type=int, default=8, help="windows per forward pass")
    args = parser.parse_args()

    device = pick_device(args.device)
    model, tokenizer = model_and_tokenizer(args.model)
    model = model.to(device).eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    prompts = (embedded_eval_prompts() * (args.prompts // len(embedded_eval_prompts()) + 1))[:args.prompts]
    print(f"model {args.model} ({n_parameters / 1e6:.1f}M parameters) on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    generate_continuations(model, tokenizer, prompts[:2], k=2, max_new_tokens=4, batch_size=2)  # warm-up
    batched, batched_s = timed(lambda: generate_continuations(model, tokenizer, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                                                              batch_size=args.batch_size))
    n_batched = sum(len(c) for c in batched)
    pairs = [(p, j) for p in prompts for j in range(args.k)][:args.single or None]
    _, single_s = timed(lambda: [generate_continuations(model, tokenizer, [p], k=1, max_new_tokens=args.max_new_tokens, seed=j, batch_size=1)
                                 for p, j in pairs])
    batched_rate, single_rate = n_batched / batched_s, len(pairs) / single_s
    print(f"generation, {args.max_new_tokens} new tokens each: batched ({len(prompts)} prompts x k={args.k}, {args.batch_size} prompts per call) "
          f"{batched_rate:.1f} continuations/s; one at a time ({len(pairs)} calls) {single_rate:.1f} continuations/s; "
          f"batched / one-at-a-time = {batched_rate / single_rate:.1f}x")

    source = args.utility_text or (str(SHARED / "data" / "wikitext-2" / "test.txt") if (SHARED / "data").exists() else "embedded")
    documents = load_utility_documents(source, args.max_documents)
    word_perplexity(model, tokenizer, documents[:1], max_length=64, batch_size=2)  # warm-up
    result, ppl_s = timed(lambda: word_perplexity(model, tokenizer, documents, max_length=args.max_length, stride=args.max_length,
                                                  batch_size=args.ppl_batch_size))
    print(f"word perplexity on {len(documents)} documents of {Path(source).name} ({result['n_tokens']:,} tokens, {result['n_words']:,} words, "
          f"windows of {result['max_length']}): {result['n_tokens'] / ppl_s:,.0f} tokens/s ({ppl_s:.1f} s; word perplexity {result['word_perplexity']:.4g})")


if __name__ == "__main__":
    main()
