"""Property tests of toxigs.surgery beyond the notebook's: random shapes, weights and piece sizes against
`reference_combine` (the float64 transcription of the formulas), and the guarantees per unit for granularity
'param'."""
import math
import subprocess
import sys

import torch
from hypothesis import given, settings, strategies as st

from toxigs.surgery import RULES, combine_gradients, reference_combine, rule_granularities


@st.composite
def problems(draw):
    shapes = draw(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**31 - 1))
    mix = draw(st.sampled_from([-1.0, -0.3, 0.0, 0.3, 1.0]))  # how much the retain gradient follows the forget one
    gen = torch.Generator().manual_seed(seed)
    forget = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    retain = [mix * f + torch.randn(s, generator=gen, dtype=torch.float64) for f, s in zip(forget, shapes)]
    if draw(st.booleans()):  # exact zeros, which never conflict
        forget = [f * (torch.rand(f.shape, generator=gen) > 0.3) for f in forget]
    rule = draw(st.sampled_from(list(RULES)))
    granularity = draw(st.sampled_from(rule_granularities(rule)))
    weights = draw(st.sampled_from([(1.0, 1.0), (0.25, 3.0), (0.0, 1.0), (2.0, 0.0)]))
    chunk = draw(st.sampled_from([1, 3, 7, 1 << 20]))
    return forget, retain, rule, granularity, weights, chunk


def cancellation(forget, retain, fw, rw) -> float:
    "The largest (a + b)/‖g1 + g2‖² of a tensor: what ‖g1 + g2‖² = a + b + 2d loses to cancellation."
    ratio = lambda f, r: float(((fw * f) ** 2 + (rw * r) ** 2).sum()) / max(float(((fw * f + rw * r) ** 2).sum()), 1e-300)
    return max([1.0, *(ratio(f, r) for f, r in zip(forget, retain) if f.numel())])


def largest_norm(forget, retain, fw, rw) -> float:
    "The largest ‖g1‖ + ‖g2‖ of a tensor: ‖u_rule‖ from the sums is good to about √ε times it."
    return max(float((fw * f).norm() + (rw * r).norm()) for f, r in zip(forget, retain))


@settings(max_examples=300, deadline=None)
@given(problems())
def test_matches_float64_reference(problem):
    forget, retain, rule, granularity, (fw, rw), chunk = problem
    expected = reference_combine(forget, retain, rule, fw, rw, granularity)
    u, stats = combine_gradients([f.clone() for f in forget], retain, rule, fw, rw, granularity, chunk_size=chunk)
    atol = 1e-10
    if rule == "rescaled_sum":  # two norms read from the three sums (nbs/02_surgery.ipynb, Against the formulas)
        atol = max(atol * cancellation(forget, retain, fw, rw), 10 * 2.0**-26 * largest_norm(forget, retain, fw, rw))
    for got, want in zip(u, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=atol)
    dot = sum(float((fw * f * rw * r).sum()) for f, r in zip(forget, retain))
    assert math.isclose(float(stats["dot"]), dot, rel_tol=1e-9, abs_tol=1e-9)
    assert all(torch.isfinite(v) for v in stats.values())


@settings(max_examples=200, deadline=None)
@given(problems())
def test_guarantees_per_unit(problem):
    forget, retain, rule, granularity, (fw, rw), chunk = problem
    u, _ = combine_gradients([f.clone() for f in forget], retain, rule, fw, rw, granularity, chunk_size=chunk)
    g1, g2 = [fw * f for f in forget], [rw * r for r in retain]
    units = [slice(None)] if granularity == "global" else [slice(i, i + 1) for i in range(len(u))]
    inner = lambda xs, ys: sum(float((x * y).sum()) for x, y in zip(xs, ys))
    for s in units:
        if rule in ("pcgrad", "pcgrad_retain"):
            assert inner(u[s], g2[s]) >= -1e-9 * (1 + inner(u[s], u[s]) + inner(g2[s], g2[s]))
        if rule in ("pcgrad", "dualproj", "upgrad", "eupmu"):  # eupmu with its default ε = 0
            assert inner(u[s], g2[s]) >= -1e-9 * (1 + inner(u[s], u[s]) + inner(g2[s], g2[s]))
        if rule in ("pcgrad", "dualproj", "upgrad"):
            assert inner(u[s], g1[s]) >= -1e-9 * (1 + inner(u[s], u[s]) + inner(g1[s], g1[s]))
        if rule in ("imtlg", "configrad") and inner(g1[s], g1[s]) and inner(g2[s], g2[s]):  # equal projections
            n1, n2 = math.sqrt(inner(g1[s], g1[s])), math.sqrt(inner(g2[s], g2[s]))
            assert abs(inner(u[s], g1[s]) / n1 - inner(u[s], g2[s]) / n2) <= 1e-9 * (1 + math.sqrt(inner(u[s], u[s])))
        if rule == "mgda":  # the min-norm point of the unit's hull: no grid point is shorter
            for x in [k / 50 for k in range(51)]:
                hull = [x * a + (1 - x) * b for a, b in zip(g1[s], g2[s])]
                assert inner(u[s], u[s]) <= inner(hull, hull) + 1e-9 * (1 + inner(g1[s], g1[s]) + inner(g2[s], g2[s]))
    if rule in ("sago", "sago_sum"):
        assert all(bool((x * y >= 0).all()) for x, y in zip(u, g2))


@settings(max_examples=50, deadline=None)
@given(problems())
def test_reference_in_the_gradients_dtype(problem):
    "dtype=None (bench/surgery.py's straightforward baseline) computes the same update in float32."
    forget, retain, rule, granularity, (fw, rw), _ = problem
    forget, retain = [f.float() for f in forget], [r.float() for r in retain]
    expected = reference_combine(forget, retain, rule, fw, rw, granularity)
    for got, want in zip(reference_combine(forget, retain, rule, fw, rw, granularity, dtype=None), expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_the_kernel_does_not_import_the_rules():
    "toxigs.fused is below toxigs.surgery: importing the kernel loads no rule module (no import cycle)."
    modules = "import sys, toxigs.fused; print(sorted(m for m in sys.modules if m.startswith('toxigs')))"
    loaded = subprocess.run([sys.executable, "-c", modules], capture_output=True, text=True, check=True).stdout
    assert "toxigs.surgery" not in loaded and "toxigs.fused" in loaded, loaded
