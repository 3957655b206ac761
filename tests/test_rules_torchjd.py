"""The rules that torchjd also has, against torchjd's aggregators on the matrix [g1; g2] (float64,
granularity 'global'): several random cases, conflicting ones included. torchjd is a test dependency
only (dev_requirements); toxigs never imports it."""
import pytest
import torch

tja = pytest.importorskip("torchjd.aggregation")
from torchjd._linalg import QuadprogProjector  # noqa: E402

from toxigs.surgery import combine_gradients, reference_combine  # noqa: E402

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


@pytest.mark.parametrize("rule, aggregator", [("imtlg", "IMTLG"), ("configrad", "ConFIG"), ("mgda", "MGDA"), ("upgrad", "UPGrad"), ("dualproj", "DualProj")])
def test_a_zero_gradient_as_torchjd(rule, aggregator):
    "One zero gradient: the same update as torchjd (IMTL-G: the other gradient)."
    g = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    for g1, g2 in ((g, torch.zeros(3, dtype=torch.float64)), (torch.zeros(3, dtype=torch.float64), g)):
        want = getattr(tja, aggregator)()(torch.stack([g1, g2]))
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
