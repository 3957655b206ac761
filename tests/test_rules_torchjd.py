"""The rules that torchjd also has, against torchjd's aggregators on the matrix [g1; g2] (float64,
granularity 'global'): several random cases, conflicting ones included. torchjd is a test dependency
only (dev_requirements); toxigs never imports it."""
import bisect

import pytest
import torch

tja = pytest.importorskip("torchjd.aggregation")
from torchjd._linalg import QuadprogProjector  # noqa: E402

from toxigs.surgery import combine_gradients, init_rule_state, reference_combine  # noqa: E402

EXACT = QuadprogProjector(norm_eps=0.0, reg_eps=0.0)  # torchjd's solver without its regularisation
# (rule, torchjd's aggregator, tolerance relative to the norm of torchjd's update); a tolerance in a
# tuple is divided by 1 − cos²(g1, g2): regularising the Gram matrix by 1e-4·I moves the projection
# by about 1e-4/sin² of the angle between the gradients (near-parallel ones: a thin cone)
AGREE = [
    ("pcgrad", lambda: tja.PCGrad(), 1e-12),
    ("mgda", lambda: tja.MGDA(), 1e-12),  # Frank-Wolfe: exact after one step for two tasks
    ("imtlg", lambda: tja.IMTLG(), 1e-10),  # pinv of the Gram matrix: independent gradients
    ("configrad", lambda: tja.ConFIG(), 1e-10),
    ("upgrad", lambda: tja.UPGrad(projector=EXACT), 1e-9),  # quadprog, to its own rounding
    ("dualproj", lambda: tja.DualProj(projector=EXACT), 1e-9),
    # torchjd's defaults normalise the Gram matrix and add 1e-4·I: toxigs is the exact projection
    ("upgrad", lambda: tja.UPGrad(), (1e-3,)),
    ("dualproj", lambda: tja.DualProj(), (1e-3,)),
    ("aligned_mtl", lambda: tja.AlignedMTL(), 1e-10),  # eigh: exact to rounding
    # a conic solver (Clarabel) to its tolerance: x within ~1e-5 (test_cagrad_is_optimal_on_the_hull)
    ("cagrad", lambda: tja.CAGrad(c=0.4), 2e-4),
]


def cases():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 5, 64):
        for mix in (-2.0, -1.0, -0.3, 0.0, 0.3, 1.0):  # how much g2 follows g1; < 0: conflicting
            for scale in (1.0, 1e3):
                g1 = scale * torch.randn(n, generator=gen, dtype=torch.float64)
                g2 = mix * g1 + scale * torch.randn(n, generator=gen, dtype=torch.float64)
                yield g1, g2


CASES = list(cases())


def test_the_cases_conflict_and_not():
    conflicts = [float(g1 @ g2) < 0 for g1, g2 in CASES]
    assert any(conflicts) and not all(conflicts)


@pytest.mark.parametrize("rule, make, tol", AGREE, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(AGREE)])
def test_rule_matches_torchjd(rule, make, tol):
    aggregator, worst = make(), 0.0
    for g1, g2 in CASES:
        want = aggregator(torch.stack([g1, g2]))
        got = combine_gradients([g1.clone()], [g2], rule)[0][0]
        ref = reference_combine([g1], [g2], rule)[0]
        gap = float((got - want).abs().max()) / float(want.norm())
        worst = max(worst, gap)
        if isinstance(tol, tuple):
            cos = float(g1 @ g2) / float(g1.norm() * g2.norm())
            assert gap <= tol[0] / (1 - cos**2), (rule, gap, cos)
        else:
            assert gap <= tol, (rule, gap)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * float(ref.norm()))
    print(f"{rule}: max |toxigs − torchjd| / ‖torchjd‖ = {worst:.2e}")


def test_upgrad_is_half_pcgrad():
    "For two tasks UPGrad is exactly half of PCGrad, in toxigs and in torchjd."
    for g1, g2 in CASES:
        half = tja.PCGrad()(torch.stack([g1, g2])) / 2
        torch.testing.assert_close(combine_gradients([g1.clone()], [g2], "upgrad")[0][0], half)
        torch.testing.assert_close(tja.UPGrad(projector=EXACT)(torch.stack([g1, g2])), half)


def test_eupmu_is_the_projected_forget_gradient():
    "EUPMU is not in torchjd 0.18: with ε = 0 it is torchjd's PCGrad minus g2 (no retain term)."
    for g1, g2 in CASES:
        pc_retain = reference_combine([g1], [g2], "pcgrad_retain")[0]
        torch.testing.assert_close(combine_gradients([g1.clone()], [g2], "eupmu")[0][0], pc_retain - g2)


@pytest.mark.parametrize("rule, aggregator", [("imtlg", "IMTLG"), ("configrad", "ConFIG"), ("mgda", "MGDA"), ("upgrad", "UPGrad"), ("dualproj", "DualProj"), ("aligned_mtl", "AlignedMTL"), ("nash_mtl", "NashMTL"), ("gradvac", "GradVac")])
def test_a_zero_gradient_as_torchjd(rule, aggregator):
    "One zero gradient: the same update as torchjd (IMTL-G: the other gradient)."
    g = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    for g1, g2 in ((g, torch.zeros(3, dtype=torch.float64)), (torch.zeros(3, dtype=torch.float64), g)):
        make = getattr(tja, aggregator)
        want = {"NashMTL": lambda: make(n_tasks=2), "CAGrad": lambda: make(c=0.4)}.get(aggregator, make)()(torch.stack([g1, g2]))
        torch.testing.assert_close(combine_gradients([g1.clone()], [g2], rule)[0][0], want, rtol=2e-4, atol=2e-4 * float(want.norm()))


def test_imtlg_on_parallel_gradients_differs_deliberately():
    "Exactly parallel gradients: torchjd's pseudo-inverse jumps; toxigs keeps the independent-gradient formula."
    g1 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g2 = 3 * g1
    toxigs_u = combine_gradients([g1.clone()], [g2], "imtlg")[0][0]
    torch.testing.assert_close(toxigs_u, 2 * 1 * 3 / (1 + 3) * g1)  # 2‖g1‖‖g2‖/(‖g1‖ + ‖g2‖) ĝ
    torch.testing.assert_close(tja.IMTLG()(torch.stack([g1, g2])), (1 + 9) / (1 + 3) * g1)


def test_configrad_on_parallel_and_opposite_gradients():
    "ConFIG's closed form holds where U is singular too: parallel (pinv) and opposite (0) gradients."
    g1 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    for g2 in (3 * g1, -3 * g1):
        want = tja.ConFIG()(torch.stack([g1, g2]))
        torch.testing.assert_close(combine_gradients([g1.clone()], [g2], "configrad")[0][0], want)


def test_cagrad_with_a_zero_gradient_differs_deliberately():
    "A zero gradient puts CAGrad's minimiser at g_x = 0: toxigs keeps the ball's centre g0, torchjd returns 0."
    g = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    for g1, g2 in ((g, zero), (zero, g)):
        torch.testing.assert_close(tja.CAGrad(c=0.4)(torch.stack([g1, g2])), zero)
        torch.testing.assert_close(combine_gradients([g1.clone()], [g2], "cagrad")[0][0], g / 2)


def _cagrad_cost(g1, g2, x, c=0.4):
    "CAGrad's dual on the hull at x: ⟨g_x, g0⟩ + c‖g0‖·‖g_x‖."
    g0, g_x = (g1 + g2) / 2, x * g1 + (1 - x) * g2
    return float(g_x @ g0 + c * g0.norm() * g_x.norm())


def _hull_point(w1, w2):
    "x of CAGrad's weights w = ½ + k·(x, 1 − x)."
    return float((w1 - 0.5) / (w1 + w2 - 1))


def test_cagrad_is_optimal_on_the_hull():
    "toxigs' closed-form x is feasible and at least as good as torchjd's solver's, clipped to [0, 1]."
    weighting = tja.CAGrad(c=0.4).gramian_weighting
    for g1, g2 in CASES:
        gram = torch.stack([g1, g2]) @ torch.stack([g1, g2]).T
        ours = _hull_point(*combine_gradients([g1.clone()], [g2], "cagrad", per_tensor=True)[1]["per_tensor_coef"][0])
        theirs = min(max(_hull_point(*weighting(gram)), 0.0), 1.0)
        assert -1e-12 <= ours <= 1 + 1e-12  # feasible (x read back from the weights: rounding)
        ours = min(max(ours, 0.0), 1.0)
        scale = float(g1.norm() + g2.norm()) ** 2
        assert _cagrad_cost(g1, g2, ours) <= _cagrad_cost(g1, g2, theirs) + 1e-12 * scale


def test_nash_mtl_solves_the_bargaining_equation():
    "toxigs' α solves Gα = 1/α to rounding; torchjd's iteration, where it converged, agrees."
    compared = 0
    for g1, g2 in CASES:
        matrix = torch.stack([g1, g2])
        gram = matrix @ matrix.T
        alpha = combine_gradients([g1.clone()], [g2], "nash_mtl", options={"max_norm": 0.0}, per_tensor=True)[1]["per_tensor_coef"][0]
        torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-10, atol=0)
        theirs = tja.NashMTL(n_tasks=2, max_norm=0.0).weighting(matrix)
        if float((gram @ theirs - 1 / theirs).abs().max() * theirs.abs().max()) < 1e-6:  # converged
            torch.testing.assert_close(theirs, alpha, rtol=1e-4, atol=0)
            want = tja.NashMTL(n_tasks=2)(matrix)  # and with torchjd's clipping to norm 1
            got = combine_gradients([g1.clone()], [g2], "nash_mtl")[0][0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.norm()))
            compared += 1
    assert compared >= len(CASES) // 3, compared  # torchjd stops early in many (14 of 36 converge)


@pytest.mark.parametrize("eps, tol", [(0.0, 1e-12), (1e-8, 1e-6)])
def test_gradvac_over_steps_as_torchjd(eps, tol):
    "The state carried from step to step: the same updates as one torchjd GradVac over all cases."
    aggregator, state = tja.GradVac(eps=eps), init_rule_state("gradvac")
    for g1, g2 in CASES:
        want = aggregator(torch.stack([g1, g2]))
        got = combine_gradients([g1.clone()], [g2], "gradvac", state=state)[0][0]
        assert float((got - want).abs().max()) <= tol * float(want.norm())
        assert float(state["target"]) == pytest.approx(float(aggregator.gramian_weighting._phi_t[0, 1]), abs=tol)


def test_rlw_weights_are_distributed_as_torchjd_random():
    "softmax of two standard normals: toxigs' and torchjd's weights have the same distribution."
    torch.manual_seed(0)
    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    theirs = sorted(float(tja.Random()(torch.stack([g1, g2]))[0]) for _ in range(4000))
    state = init_rule_state("rlw", seed=0)
    ours = sorted(float(combine_gradients([g1.clone()], [g2], "rlw", state=state)[0][0][0]) for _ in range(4000))
    critical = 1.63 * (2 / 4000) ** 0.5  # two-sample Kolmogorov-Smirnov, 1% level
    assert _ks(theirs, ours) < critical, _ks(theirs, ours)
    other = torch.Generator().manual_seed(1)
    uniform = sorted(torch.rand(4000, generator=other).tolist())
    wider = sorted(torch.sigmoid(2 * torch.randn(4000, generator=other)).tolist())  # N(0, 4I)
    assert _ks(theirs, uniform) > critical and _ks(theirs, wider) > critical  # the test can tell


def _ks(a: list, b: list) -> float:
    "The two-sample Kolmogorov-Smirnov statistic of two sorted samples."
    cdf = lambda xs, x: bisect.bisect_right(xs, x) / len(xs)
    return max(abs(cdf(a, x) - cdf(b, x)) for x in a + b)
