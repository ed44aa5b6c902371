import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from scipy.special import chdtrc, log_ndtr
from scipy.stats import chi2

from swarmguard.structures.chi2 import chi2_logsf, chi2_sf


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 10, 16, 20, 22, 41, 64])
def test_matches_scipy_over_the_whole_range(dof):
    x = np.concatenate([[0.0, 1e-300, 1e-12], np.geomspace(1e-6, 3000.0, 4000), [1e5, 1e30, 1e300]])
    ours = chi2_sf(x, dof)
    ref = chdtrc(dof, x)
    assert np.all(np.isfinite(ours)) and np.all((ours >= 0) & (ours <= 1))
    live = ref > 1e-290       # below, both are deep in the subnormal range
    np.testing.assert_allclose(ours[live], ref[live], rtol=5e-13, atol=0)
    assert np.all(ours[~live] < 1e-280)


# ---------------------------------------------------------------- log tail (issue 10: finite for any distance)

# log P(χ²_d > x) from mpmath 1.3 (mp.dps = 60):
#   float(mp.log(mp.gammainc(mp.mpf(d) / 2, mp.mpf(x) / 2, mp.inf, regularized=True)))
_MPMATH_LOGSF = [
    (1, 0.5, -0.7350111298370844),
    (1, 30.0, -16.95731815812879),
    (1, 700.0, -353.50275502514864),
    (1, 1500.0, -753.8830671053825),
    (1, 12345.5, -6177.686395789016),
    (1, 10000000.0, -5000008.284839278),
    (1, 1e+50, -5e+49),
    (1, 1e+150, -5e+149),
    (1, 1e+300, -5e+299),
    (2, 0.5, -0.25),
    (2, 30.0, -15.0),
    (2, 700.0, -350.0),
    (2, 1500.0, -750.0),
    (2, 12345.5, -6172.75),
    (2, 10000000.0, -5000000.0),
    (2, 1e+50, -5e+49),
    (2, 1e+150, -5e+149),
    (2, 1e+300, -5e+299),
    (3, 0.5, -0.08458732285189934),
    (3, 30.0, -13.493385732625),
    (3, 700.0, -346.9488256623668),
    (3, 1500.0, -746.5685151578195),
    (3, 12345.5, -6168.265186909716),
    (3, 10000000.0, -4999992.1667434275),
    (3, 1e+50, -5e+49),
    (3, 1e+150, -5e+149),
    (3, 1e+300, -5e+299),
    (5, 0.5, -0.007907891887427028),
    (5, 30.0, -11.124363680589559),
    (5, 700.0, -341.49350049434906),
    (5, 1500.0, -740.352573728229),
    (5, 12345.5, -6159.942590292852),
    (5, 10000000.0, -4999977.147259865),
    (5, 1e+50, -5e+49),
    (5, 1e+150, -5e+149),
    (5, 1e+300, -5e+299),
    (7, 0.5, -0.000553671857553622),
    (7, 30.0, -9.262057702766654),
    (7, 700.0, -336.5489928103362),
    (7, 1500.0, -734.6474561470056),
    (7, 12345.5, -6152.130819273514),
    (7, 10000000.0, -4999962.638601926),
    (7, 1e+50, -5e+49),
    (7, 1e+150, -5e+149),
    (7, 1e+300, -5e+299),
    (10, 0.5, -6.611732418488862e-06),
    (10, 30.0, -7.0624913842329065),
    (10, 700.0, -329.73486005118434),
    (10, 1500.0, -726.6924205661536),
    (10, 12345.5, -6141.015806825477),
    (10, 10000000.0, -4999941.478259149),
    (10, 1e+50, -5e+49),
    (10, 1e+150, -5e+149),
    (10, 1e+300, -5e+299),
    (11, 0.5, -1.3734716368490553e-06),
    (11, 30.0, -6.447426262428521),
    (11, 700.0, -327.58421173917424),
    (11, 1500.0, -724.1614745409802),
    (11, 12345.5, -6137.431536057606),
    (11, 10000000.0, -4999934.545544951),
    (11, 1e+50, -5e+49),
    (11, 1e+150, -5e+149),
    (11, 1e+300, -5e+299),
    (20, 0.5, -2.0942485399975804e-13),
    (20, 30.0, -2.6613527866436884),
    (20, 700.0, -310.0544553465808),
    (20, 1500.0, -703.209112386371),
    (20, 12345.5, -6106.999271128168),
    (20, 10000000.0, -4999873.977289447),
    (20, 1e+50, -5e+49),
    (20, 1e+150, -5e+149),
    (20, 1e+300, -5e+299),
    (25, 0.5, -1.3824518312583349e-17),
    (25, 30.0, -1.4948198585665224),
    (25, 700.0, -301.3348069253835),
    (25, 1500.0, -692.5880745604313),
    (25, 12345.5, -6091.111636239965),
    (25, 10000000.0, -4999841.347437803),
    (25, 1e+50, -5e+49),
    (25, 1e+150, -5e+149),
    (25, 1e+300, -5e+299),
    (33, 0.5, -1.0740620781136708e-24),
    (33, 30.0, -0.4824691192802195),
    (33, 700.0, -288.43463200637115),
    (33, 1500.0, -676.6457652537711),
    (33, 12345.5, -6066.742795028687),
    (33, 10000000.0, -4999790.191050123),
    (33, 1e+50, -5e+49),
    (33, 1e+150, -5e+149),
    (33, 1e+300, -5e+299),
    (49, 0.5, -4.526155171832923e-40),
    (49, 30.0, -0.014917537128793727),
    (49, 700.0, -265.45978117883135),
    (49, 1500.0, -647.5869838464623),
    (49, 12345.5, -6020.83103734523),
    (49, 10000000.0, -4999690.704200772),
    (49, 1e+50, -5e+49),
    (49, 1e+150, -5e+149),
    (49, 1e+300, -5e+299),
    (50, 0.5, -4.502725978878787e-41),
    (50, 30.0, -0.011227574255627303),
    (50, 700.0, -264.12352224703676),
    (50, 1500.0, -645.870494653854),
    (50, 12345.5, -6018.061241055147),
    (50, 10000000.0, -4999684.585961308),
    (50, 1e+50, -5e+49),
    (50, 1e+150, -5e+149),
    (50, 1e+300, -5e+299),
]


@pytest.mark.parametrize("dof, x, ref", _MPMATH_LOGSF)
def test_logsf_matches_mpmath_reference_values(dof, x, ref):
    assert chi2_logsf(x, dof) == pytest.approx(ref, rel=2e-13, abs=0)


def _exact_even_logsf(x: float, dof: int) -> float:
    """log Q for even d from the finite series e^{-y} Σ_{i<k} y^i / i!, in 200-digit decimals.

    The float ``x`` converts exactly; the series has positive terms only, and
    Decimal's ``ln`` is correctly rounded, so 200 digits leave 17 even where log Q is -1e-110 (Q = 1 - P cancels ~110 digits).
    """
    with localcontext() as ctx:
        ctx.prec = 200
        y = Decimal(x) / 2
        total = sum(y**i / math.factorial(i) for i in range(dof // 2))
        return float(total.ln() - y)


@pytest.mark.parametrize("dof", range(2, 51, 2))
def test_logsf_even_dof_matches_the_exact_series_up_to_1e300(dof):
    xs = [1e-3, 1.0, 37.5, 1600.0, 3e4, 1e8, 1e40, 1e120, 1e300]
    got = chi2_logsf(np.array(xs), dof)
    ref = np.array([_exact_even_logsf(x, dof) for x in xs])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=2e-13, atol=1e-300)


@pytest.mark.parametrize("dof", range(1, 50, 2))
def test_logsf_odd_dof_matches_the_erfc_recurrence_up_to_1e300(dof):
    # Q(x; 1) = erfc(√y) = 2 Φ(-√x), and Q(x; d + 2) = Q(x; d) + e^{-y} y^{d/2} / Γ(d/2 + 1),
    # summed in log space from SciPy's log Φ (an implementation independent of ours).
    xs = np.array([1e-3, 1.0, 37.5, 1600.0, 3e4, 1e8, 1e40, 1e120, 1e300])
    y = xs / 2
    ref = math.log(2.0) + log_ndtr(-np.sqrt(xs))
    for k in range(1, dof, 2):
        term = -y + (k / 2) * np.log(y) - math.lgamma(k / 2 + 1)
        ref = np.logaddexp(ref, term)
    got = chi2_logsf(xs, dof)
    assert np.all(np.isfinite(got))
    # log-space sums near Q = 1 are only accurate absolutely (the mpmath table covers that end)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dof", [1, 2, 3, 10, 17, 50, 200])
def test_logsf_agrees_with_scipy_where_scipy_is_finite_and_is_finite_beyond(dof):
    x = np.concatenate([[0.0, 1e-300], np.geomspace(1e-6, 5e4, 3000), [1e100, 1e300, 1.7e308]])
    got = chi2_logsf(x, dof)
    assert np.all(np.isfinite(got)) and np.all(got <= 0.0)
    assert np.all(np.diff(got[1:]) <= 0.0)                  # a survival function only falls
    ref = chi2.logsf(x, dof)
    live = np.isfinite(ref) & (chi2.sf(x, dof) > 1e-300)
    np.testing.assert_allclose(got[live], ref[live], rtol=1e-12, atol=1e-300)
    assert chi2_logsf(np.inf, dof) == -np.inf


def test_logsf_takes_scalars_and_returns_a_float():
    value = chi2_logsf(1e300, 10)
    assert isinstance(value, float) and math.isfinite(value) and value == pytest.approx(-5e299, rel=1e-15)


def _asymptotic_logsf(x: float, dof: int) -> float:
    """log Q from the asymptotic series of Γ(a, y) (Abramowitz & Stegun 6.5.32), in 60-digit decimals.

    ``Γ(a, y) ~ y^(a-1) e^(-y) Σ_k (a-1)(a-2)...(a-k) / y^k``, summed while the terms
    fall (an error below the first omitted term); used where ``y >= 50 a²``, so the
    terms fall by at least 50 each and 20 of them exceed double precision.
    """
    a = Decimal(dof) / 2
    with localcontext() as ctx:
        ctx.prec = 60
        y = Decimal(x) / 2
        term, total = Decimal(1), Decimal(1)
        for k in range(1, 40):
            term = term * (a - k) / y
            if term == 0 or abs(term) < Decimal(10) ** -40:
                break
            total += term
        return float((a - 1) * y.ln() - y + total.ln()) - math.lgamma(float(a))


@pytest.mark.parametrize("dof", [100, 256, 500, 998, 1000])
def test_logsf_large_even_dof_matches_the_exact_series_up_to_1e300(dof):
    xs = [0.5 * dof, float(dof), 2.0 * dof, 10.0 * dof, 1e5, 1e8, 1e40, 1e120, 1e300]
    got = chi2_logsf(np.array(xs), dof)
    ref = np.array([_exact_even_logsf(x, dof) for x in xs])
    assert np.all(np.isfinite(got)) and np.all(np.diff(got) <= 0.0)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dof", [1, 7, 99, 501, 999, 1000])
def test_logsf_matches_the_published_asymptotic_series_far_out_up_to_1e300(dof):
    a = dof / 2
    xs = [x for x in [2e2, 1e4, 1e6, 1e8, 1e20, 1e100, 1e200, 1e300] if x / 2 >= 50 * a * a]
    got = chi2_logsf(np.array(xs), dof)
    ref = np.array([_asymptotic_logsf(x, dof) for x in xs])
    assert len(xs) >= 3 and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0)
