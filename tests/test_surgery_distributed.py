"""Two CPU processes (gloo), gradients sharded along dim 0 as FSDP does: each rank's shard of the update
equals the slice of the unsharded update, and the statistics agree, for every rule and granularity."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from toxigs.surgery import RULES, combine_gradients, rule_granularities

WORLD = 2
# uneven splits (5 -> 3 + 2), a one-row tensor (rank 1 holds an empty shard), 1-D and 3-D tensors
SHAPES = [(5, 3), (1, 4), (7,), (2, 3, 2), (64, 8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases():
    "(rule, granularity, forget_weight, retain_weight, conflicting) for every rule and granularity."
    for rule in RULES:
        for granularity in rule_granularities(rule):
            for weights in ((1.0, 1.0), (0.5, 2.0)):
                for conflicting in (False, True):
                    yield rule, granularity, *weights, conflicting


def gradients(conflicting: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    forget = [torch.randn(s, generator=gen) for s in SHAPES]
    sign = -1.0 if conflicting else 1.0
    retain = [sign * f + 0.7 * torch.randn(s, generator=gen) for f, s in zip(forget, SHAPES)]
    return forget, retain


def coefficient_condition(rule: str, key: str, stats: dict) -> float:
    """How much a weight statistic amplifies the float32 rounding of the sums (1: not at all).

    Aligned-MTL's weights are w1 ∝ b + σ − d and w2 ∝ a + σ − d (σ = √det G): a small difference
    of large terms where the gradients are alike, so the two summation orders (sharded, whole) give
    weights that agree to rtol·(b + σ + |d|)/|b + σ − d|, not to rtol. The updates themselves
    are held to the common tolerance."""
    if rule != "aligned_mtl" or key not in ("forget_coef", "retain_coef"):
        return 1.0
    a, b, d = (float(stats[k]) for k in ("forget_norm", "retain_norm", "dot"))
    a, b = a * a, b * b
    sigma = max(a * b - d * d, 0.0) ** 0.5
    own = b if key == "forget_coef" else a
    return max(1.0, (own + sigma + abs(d)) / max(abs(own + sigma - d), 1e-300))


def shard(tensors, rank):
    "This rank's dim-0 shard of each tensor, in its own contiguous memory (as FSDP's local shards)."
    return [t.tensor_split(WORLD, dim=0)[rank].clone() for t in tensors]


def worker(rank: int, port: int):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for seed, (rule, granularity, fw, rw, conflicting) in enumerate(cases()):
            forget, retain = gradients(conflicting, seed)
            full, full_stats = combine_gradients([f.clone() for f in forget], retain, rule, fw, rw, granularity)
            mine, stats = combine_gradients(shard(forget, rank), shard(retain, rank), rule, fw, rw, granularity,
                                            group=dist.group.WORLD, chunk_size=16)  # small pieces: shards split too
            case = f"rank {rank}, {rule}/{granularity}, weights {fw}/{rw}, conflicting={conflicting}"
            for i, (got, want) in enumerate(zip(mine, shard(full, rank))):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{case}, tensor {i}: {m}")
            assert stats.keys() == full_stats.keys(), case
            for k in stats:
                rtol = 1e-6 * coefficient_condition(rule, k, full_stats)
                torch.testing.assert_close(stats[k], full_stats[k], rtol=rtol, atol=1e-9, msg=lambda m: f"{case}, {k}: {m}")
            if conflicting and granularity == "global":
                assert full_stats["conflict"] > 0, f"{case}: the conflicting case does not conflict"
            # every rank took the same decision: the statistics are bitwise equal across ranks
            gathered = [None] * WORLD
            dist.all_gather_object(gathered, {k: v.item() for k, v in stats.items()})
            assert gathered[0] == gathered[1], f"{case}: ranks disagree: {gathered}"
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_sharded_update_equals_unsharded():
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)
