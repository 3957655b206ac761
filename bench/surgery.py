"""Time every gradient-surgery rule and granularity of `toxigs.surgery.combine_gradients`.

Each rule runs in place (u overwrites the forget gradients, as training calls it; they are restored
between calls) on a list of per-parameter tensors and, for granularity 'global', also on one flat tensor
per side (how `toxigs.train` passes them). Gradient shapes: GPT-2-124M fp32 (148 tensors, 124,439,808
elements; tied embeddings counted once) and a Llama-shaped 1.24B set (the Llama-3.2-1B configuration:
vocab 128256, hidden 2048, MLP 8192, 16 layers, 32 query / 8 key-value heads of 64, RMSNorm weights
only, tied embeddings: 146 tensors, 1,235,814,400 elements).

For each rule it prints the median and best time over `--repeats` interleaved rounds, the ratio to `sum`
measured in the same run, the memory-bandwidth bound (gradient-sized arrays the rule must move x bytes /
bandwidth: `sum` and the sign rules move 3, the projection rules 5) and the extra peak memory beyond the
inputs and the output (CUDA only: the CPU allocator keeps no statistics; there the temporaries are
bounded by construction, at most two pieces of `chunk_size` elements). It also times a straightforward
PCGrad: `toxigs.surgery.reference_combine`, the transcription of the formulas the tests check against, in
the gradients' own dtype (Python loop over parameters, a host read per sum, an `if`, copies of both
gradients), and prints our speed-up over it. Where torchjd is installed (a dev dependency) it also times
torchjd's aggregator of each rule on the same gradients (the 2 x n matrix [g1; g2]). The bandwidth is measured in the same run (best of a copy,
an add and an in-place add of 256 MiB buffers) unless `--bandwidth` is given.

    python bench/surgery.py --device cpu --repeats 3
    python bench/surgery.py --device cuda --shapes both --repeats 20
"""
import argparse
import math
import platform
import statistics
import time
import warnings

import torch

from toxigs.surgery import MEMORY_RULES, RULES, SignRule, combine_gradients, init_rule_state, reference_combine
from toxigs.surgery import rule_granularities

try:  # a dev dependency: the reference the rules are tested against, timed beside them
    import torchjd.aggregation as tja
except ImportError:
    tja = None

GPT2_TENSORS, GPT2_ELEMENTS = 148, 124_439_808
LLAMA_TENSORS, LLAMA_ELEMENTS = 146, 1_235_814_400
GPU_COMMAND = "python bench/surgery.py --device cuda --shapes both --repeats 20"
REFERENCE = "reference_combine pcgrad (loop, host reads, copies)"  # the straightforward baseline's row


def gpt2_shapes(n_layer: int = 12, d: int = 768, vocab: int = 50257, context: int = 1024) -> list[tuple[int, ...]]:
    "GPT-2 parameter shapes in HF order (Conv1D weights are in x out); the LM head is tied to wte."
    shapes = [(vocab, d), (context, d)]
    for _ in range(n_layer):
        shapes += [(d,), (d,),                      # ln_1
                   (d, 3 * d), (3 * d,),            # attn.c_attn
                   (d, d), (d,),                    # attn.c_proj
                   (d,), (d,),                      # ln_2
                   (d, 4 * d), (4 * d,),            # mlp.c_fc
                   (4 * d, d), (d,)]                # mlp.c_proj
    return shapes + [(d,), (d,)]                    # ln_f


def llama_shapes(n_layer: int = 16, d: int = 2048, ff: int = 8192, vocab: int = 128256, heads: int = 32,
                 kv_heads: int = 8) -> list[tuple[int, ...]]:
    "Llama parameter shapes (Llama-3.2-1B by default): no biases, RMSNorm weights, tied embeddings."
    kv = d // heads * kv_heads
    shapes = [(vocab, d)]
    for _ in range(n_layer):
        shapes += [(d, d), (kv, d), (kv, d), (d, d),   # q, k, v, o
                   (ff, d), (ff, d), (d, ff),          # gate, up, down
                   (d,), (d,)]                         # input and post-attention norms
    return shapes + [(d,)]


def elements(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


assert len(gpt2_shapes()) == GPT2_TENSORS and elements(gpt2_shapes()) == GPT2_ELEMENTS
assert len(llama_shapes()) == LLAMA_TENSORS and elements(llama_shapes()) == LLAMA_ELEMENTS


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def measured_bandwidth(device, repeats: int = 5) -> float:
    "Best streaming bandwidth in bytes/s over a copy (2 arrays), an add and an in-place add (3 arrays) of 256 MiB buffers."
    n = 1 << 26
    x, y, z = (torch.rand(n, device=device) for _ in range(3))
    best = 0.0
    for _ in range(repeats):
        for arrays, op in ((2, lambda: z.copy_(x)), (3, lambda: torch.add(x, y, out=z)), (3, lambda: z.add_(y))):
            sync(device); start = time.perf_counter(); op(); sync(device)
            best = max(best, arrays * n * 4 / (time.perf_counter() - start))
    del x, y, z
    return best


def time_once(fn, device) -> tuple[float, float | None]:
    "Seconds for one call, and the extra peak memory in bytes it allocated (CUDA only)."
    extra = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    del result
    if device.type == "cuda": extra = torch.cuda.max_memory_allocated(device) - base
    return seconds, extra


def torchjd_aggregators() -> dict:
    "torchjd's aggregator of each rule it also has, with its defaults (CAGrad's c: the paper's 0.4)."
    if tja is None:
        return {}
    return {"sum": tja.Sum(), "pcgrad": tja.PCGrad(), "mgda": tja.MGDA(), "dualproj": tja.DualProj(),
            "upgrad": tja.UPGrad(), "imtlg": tja.IMTLG(), "configrad": tja.ConFIG(), "cagrad": tja.CAGrad(c=0.4),
            "nash_mtl": tja.NashMTL(n_tasks=2), "aligned_mtl": tja.AlignedMTL(), "gradvac": tja.GradVac(),
            "rlw": tja.Random()}


def bench(name: str, shapes, device, repeats: int, bandwidth: float | None, reference: bool, chunk_size: int | None):
    n = elements(shapes)
    gen = torch.Generator(device=device).manual_seed(0)
    # one flat buffer per side; the per-tensor gradients are views of it, so both layouts share memory
    flat_forget = torch.randn(n, device=device, generator=gen)
    # conflicting on the whole (cosine about -0.45), so the reference does its full work; ours is branch-free
    flat_retain = torch.randn(n, device=device, generator=gen).add_(flat_forget, alpha=-0.5)
    pristine = flat_forget.clone()  # restored before every timed call, so every rule sees the same inputs
    views = lambda flat: [v.view(s) for v, s in zip(flat.split([math.prod(s) for s in shapes]), shapes)]
    forget, retain = views(flat_forget), views(flat_retain)
    bw = bandwidth or measured_bandwidth(device)

    # in place, as training calls it: u overwrites the forget gradients (restored from `pristine` after each call)
    runs = {"plain add, no statistics": (lambda: torch._foreach_add_(forget, retain), 3)}
    # arrays moved: sign rules 3; projection rules 5 (two sweeps); a memory rule 7 (m read and written too)
    arrays = lambda rule, unit: 3 if isinstance(unit, SignRule) else 7 if rule in MEMORY_RULES else 5
    # a stateful rule keeps its state from call to call, as in training (gru's memory is made once)
    for rule, unit in RULES.items():
        for granularity in rule_granularities(rule):
            state = init_rule_state(rule, granularity, len(forget), device)
            runs[f"{rule} / {granularity}"] = (
                lambda rule=rule, granularity=granularity, state=state: combine_gradients(
                    forget, retain, rule, granularity=granularity, check_finite=False, chunk_size=chunk_size,
                    state=state or None),
                arrays(rule, unit))
    for rule, unit in RULES.items():  # the trainer's layout for granularity 'global': one tensor per side
        state = init_rule_state(rule, "global", 1, device)
        runs[f"{rule} / global, one flat tensor"] = (
            lambda rule=rule, state=state: combine_gradients([flat_forget], [flat_retain], rule, check_finite=False,
                                                             chunk_size=chunk_size, state=state or None),
            arrays(rule, unit))
    runs["pcgrad / global, check_finite=True"] = (
        lambda: combine_gradients(forget, retain, "pcgrad", check_finite=True, chunk_size=chunk_size), 5)
    if reference: runs[REFERENCE] = (lambda: reference_combine(forget, retain, "pcgrad", dtype=None), 5)
    # torchjd aggregates the matrix [g1; g2]: built once here (its Jacobian), not timed
    aggregators = torchjd_aggregators()
    matrix = torch.stack([flat_forget, flat_retain]) if aggregators else None
    for rule, aggregator in aggregators.items():
        runs[f"torchjd {rule}"] = (lambda aggregator=aggregator: aggregator(matrix), 3)

    times, extras = {k: [] for k in runs}, {k: 0 for k in runs}
    for round_ in range(repeats + 1):  # round 0 warms up (allocator, caches, layout)
        for key, (fn, _) in runs.items():
            seconds, extra = time_once(fn, device)
            flat_forget.copy_(pristine)
            if round_: times[key].append(seconds)
            if extra is not None: extras[key] = max(extras[key], extra)

    base = statistics.median(times["sum / global"])
    print(f"\n### {name}: {len(shapes)} tensors, {n:,} fp32 elements ({n * 4 / 2**20:,.0f} MiB per gradient)")
    print(f"bandwidth {bw / 1e9:.1f} GB/s ({'given' if bandwidth else 'measured: best of copy, add, in-place add'}); "
          f"median and best of {repeats} interleaved rounds\n")
    print("| rule / granularity | median ms | best ms | × sum | arrays | bound ms | × bound | extra peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, (_, arrays) in runs.items():
        med, best = statistics.median(times[key]), min(times[key])
        bound = arrays * n * 4 / bw
        extra = f"{extras[key] / 2**20:,.0f}" if device.type == "cuda" else "n/a"
        print(f"| {key} | {med * 1e3:,.1f} | {best * 1e3:,.1f} | {med / base:.2f} | {arrays} | {bound * 1e3:,.1f} "
              f"| {med / bound:.2f} | {extra} |")
    if aggregators:
        print("\nBeside torchjd (its aggregator on the 2 x n matrix [g1; g2], the matrix built once, untimed;"
              " toxigs on one flat tensor per side, as training calls it):\n")
        print("| rule | toxigs ms | × sum | torchjd ms | torchjd / toxigs |")
        print("|---|---:|---:|---:|---:|")
        for rule in RULES:
            ours = statistics.median(times[f"{rule} / global, one flat tensor"])
            flat_sum = statistics.median(times["sum / global, one flat tensor"])
            theirs = statistics.median(times[f"torchjd {rule}"]) if rule in aggregators else None
            cells = f"{theirs * 1e3:,.1f} | {theirs / ours:.2f}" if theirs else "— | —"
            print(f"| {rule} | {ours * 1e3:,.1f} | {ours / flat_sum:.2f} | {cells} |")
    if reference:
        ours = statistics.median(times["pcgrad / global"])
        print(f"\nspeed-up of pcgrad / global over the reference: "
              f"{statistics.median(times[REFERENCE]) / ours:.1f}x")
    del forget, retain, flat_forget, flat_retain, pristine, matrix


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--shapes", choices=["gpt2", "llama1b", "both"], default=None,
                        help="gradient shapes (default: both on cuda, gpt2 on cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 20 on cuda, 5 on cpu)")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="peak memory bandwidth in GB/s for the bound (default: measured in this run)")
    parser.add_argument("--chunk-size", type=int, default=None, help="elements per piece (default: the library's)")
    parser.add_argument("--no-reference", action="store_true", help="skip the straightforward reference (saves 2 gradients of memory)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    shapes = args.shapes or ("both" if device.type == "cuda" else "gpt2")
    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    if device.type == "cpu" and shapes != "gpt2":
        warnings.warn("llama1b on CPU needs about 35 GB of memory (inputs, a pristine copy, the reference's copies "
                      "and outputs) and minutes per round; --no-reference saves 15 GB", stacklevel=1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"toxigs surgery benchmark: torch {torch.__version__}, {name}")
    bandwidth = args.bandwidth * 1e9 if args.bandwidth else None
    if shapes in ("gpt2", "both"):
        bench("GPT-2-124M", gpt2_shapes(), device, repeats, bandwidth, not args.no_reference, args.chunk_size)
    if shapes in ("llama1b", "both"):
        bench("Llama-1.2B (Llama-3.2-1B shapes)", llama_shapes(), device, repeats, bandwidth, not args.no_reference, args.chunk_size)
    if device.type != "cuda":
        print(f"\nOn a GPU: {GPU_COMMAND}")


if __name__ == "__main__":
    main()
