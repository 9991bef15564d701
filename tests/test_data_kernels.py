"""Tests for ddr_restore.data.kernels: Real-ESRGAN-style random blur kernels."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ddr_restore.data import kernels as K
from ddr_restore.errors import InputError

TYPES_WITH_SINC = K.KERNEL_TYPES + ("sinc",)


def _all_fixed_kernels():
    """One of each deterministic kind, at a few sizes and shapes."""
    out = []
    for size in (7, 13, 21):
        out.append(K.gaussian_kernel(size, 1.3, 1.3))
        out.append(K.gaussian_kernel(size, 3.0, 0.2, 0.7))
        out.append(K.generalized_gaussian_kernel(size, 2.0, 0.5, -1.2, beta=0.5))
        out.append(K.generalized_gaussian_kernel(size, 0.2, 0.2, 0.0, beta=4.0))
        out.append(K.plateau_kernel(size, 1.0, 2.5, 2.9, beta=1.0))
        out.append(K.plateau_kernel(size, 0.2, 3.0, 0.1, beta=2.0))
        out.append(K.sinc_kernel(size, math.pi / 5))
        out.append(K.sinc_kernel(size, math.pi))
    return out


def test_fixed_kernels_sum_to_one_and_are_finite():
    for k in _all_fixed_kernels():
        assert np.all(np.isfinite(k))
        assert abs(k.sum() - 1.0) < 1e-6
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1


def test_gaussian_matches_direct_formula():
    # Independent computation: the bivariate normal density with an explicit covariance matrix.
    size, sx, sy, theta = 11, 2.0, 0.7, 0.4
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sx**2, sy**2]) @ rot.T
    inv = np.linalg.inv(cov)
    r = size // 2
    ref = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            d = np.array([col - r, row - r], dtype=float)  # (x, y)
            ref[row, col] = math.exp(-0.5 * d @ inv @ d)
    ref /= ref.sum()
    np.testing.assert_allclose(K.gaussian_kernel(size, sx, sy, theta), ref, atol=1e-12)


@pytest.mark.parametrize("beta", [0.5, 2.0, 4.0])
def test_generalized_and_plateau_match_direct_formula(beta):
    # Independent scalar computation of the two shapes (isotropic, so the quadratic form is r^2 / sigma^2).
    size, sigma = 9, 1.4
    r = size // 2
    g = np.zeros((size, size))
    pl = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            q = ((col - r) ** 2 + (row - r) ** 2) / sigma**2
            g[row, col] = math.exp(-0.5 * q**beta)
            pl[row, col] = 1.0 / (1.0 + q**beta)
    np.testing.assert_allclose(K.generalized_gaussian_kernel(size, sigma, sigma, 0.0, beta), g / g.sum(), atol=1e-12)
    np.testing.assert_allclose(K.plateau_kernel(size, sigma, sigma, 0.0, beta), pl / pl.sum(), atol=1e-12)


def test_generalized_with_beta_one_is_gaussian():
    np.testing.assert_allclose(
        K.generalized_gaussian_kernel(15, 1.5, 0.8, 0.3, beta=1.0), K.gaussian_kernel(15, 1.5, 0.8, 0.3), atol=1e-12
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: K.gaussian_kernel(13, 1.7, 1.7, 0.9),  # theta must not matter when isotropic
        lambda: K.generalized_gaussian_kernel(13, 1.1, 1.1, 0.0, beta=0.6),
        lambda: K.plateau_kernel(13, 2.2, 2.2, 0.0, beta=1.5),
        lambda: K.sinc_kernel(13, 1.3),
    ],
)
def test_isotropic_kernels_are_rotation_symmetric(make):
    k = make()
    np.testing.assert_allclose(k, k.T, atol=1e-12)
    np.testing.assert_allclose(k, np.rot90(k), atol=1e-12)
    np.testing.assert_allclose(k, k[::-1, :], atol=1e-12)
    # Radial: values at equal distance along an axis and a diagonal-ish point agree (3,4,5 triangle).
    r = k.shape[0] // 2
    assert abs(k[r, r + 5] - k[r + 3, r + 4]) < 1e-12


@pytest.mark.parametrize("fn", [K.gaussian_kernel, K.generalized_gaussian_kernel, K.plateau_kernel])
def test_anisotropic_rotation(fn):
    extra = {} if fn is K.gaussian_kernel else {"beta": 1.7}
    k0 = fn(15, 3.0, 0.8, 0.0, **extra)
    # theta = pi/2 swaps the axes: the transpose.
    np.testing.assert_allclose(fn(15, 3.0, 0.8, math.pi / 2, **extra), k0.T, atol=1e-12)
    # Swapping the sigmas also gives the transpose.
    np.testing.assert_allclose(fn(15, 0.8, 3.0, 0.0, **extra), k0.T, atol=1e-12)
    # A kernel is point-symmetric, so theta and theta + pi are the same kernel.
    np.testing.assert_allclose(fn(15, 3.0, 0.8, 0.5 + math.pi, **extra), fn(15, 3.0, 0.8, 0.5, **extra), atol=1e-12)
    # theta = 0: elongated along the columns (x), i.e. wider along a row than along a column.
    r = 7
    assert k0[r, r + 3] > 10 * k0[r + 3, r]
    # theta = pi/4 elongates along the main diagonal (x and y growing together), not the anti-diagonal.
    k45 = fn(15, 3.0, 0.8, math.pi / 4, **extra)
    assert k45[r + 3, r + 3] > 10 * k45[r + 3, r - 3]
    np.testing.assert_allclose(k45, k45.T, atol=1e-12)


def test_plateau_is_flatter_than_gaussian_at_the_top_and_heavier_in_the_tail():
    g = K.gaussian_kernel(21, 2.0, 2.0)
    p = K.plateau_kernel(21, 2.0, 2.0, beta=2.0)
    assert p[10, 10 + 10] / p[10, 10] > g[10, 10 + 10] / g[10, 10]


def _freq_response(k: np.ndarray, n: int = 256) -> np.ndarray:
    """|DTFT| of a centred kernel on an n x n grid; index i along an axis is frequency 2*pi*i/n."""
    return np.abs(np.fft.fft2(k, s=(n, n)))


@pytest.mark.parametrize("size", [7, 11, 13, 21])
@pytest.mark.parametrize("cutoff", [math.pi / 5, math.pi / 3, math.pi / 2, 0.6 * math.pi])
def test_sinc_kernel_is_low_pass(size, cutoff):
    k = K.sinc_kernel(size, cutoff)
    n = 512
    h = _freq_response(k, n)
    assert abs(h[0, 0] - 1.0) < 1e-9  # DC gain 1
    w = 2 * np.pi * np.arange(n) / n
    # Truncation to 7..21 taps leaves ripple of up to ~25 % in the pass band and ~16 % in the stop band,
    # so the bounds are loose, but a high-pass or all-pass kernel fails them by far.
    passband = w <= 0.5 * cutoff
    stopband = (w >= 1.5 * cutoff) & (w <= np.pi)
    for resp in (h[:, 0], h[0, :]):  # along the rows and the columns
        assert resp[passband].min() > 0.75
        assert resp[stopband].max() < 0.2
        assert resp[passband].mean() > 4 * resp[stopband].mean()
    # Diagonal direction too (circular, not square, pass band): |omega| = 1.5 * cutoff .. pi along the diagonal.
    diag = np.array([h[i, i] for i in range(n // 2 + 1)]) * 1.0
    wd = w[: n // 2 + 1] * math.sqrt(2)
    assert diag[(wd >= 1.5 * cutoff) & (wd <= np.pi)].max() < 0.2


def test_sinc_differs_from_gaussian_ringing():
    # A truncated ideal low-pass has negative side lobes, unlike the blur kernels.
    assert K.sinc_kernel(21, math.pi / 4).min() < 0
    assert K.gaussian_kernel(21, 3.0, 3.0).min() > 0


def test_identity_and_pad():
    img = np.random.default_rng(0).random((9, 9))
    ident = K.identity_kernel(5)
    assert ident.sum() == 1.0 and ident[2, 2] == 1.0
    k = K.gaussian_kernel(7, 1.0, 2.0, 0.3)
    p = K.pad_kernel(k, 21)
    assert p.shape == (21, 21) and abs(p.sum() - 1.0) < 1e-12
    np.testing.assert_array_equal(p[7:14, 7:14], k)
    with pytest.raises(InputError):
        K.pad_kernel(k, 5)
    with pytest.raises(InputError):
        K.pad_kernel(img[:, :8], 21)


def _draw(n, seed, cfg=None):
    rng = np.random.default_rng(seed)
    return [K.random_kernel(rng, cfg) for _ in range(n)]


def test_random_kernels_respect_configured_ranges():
    for cfg in (K.KernelConfig.first_order(), K.KernelConfig.second_order(kernel_size=(9, 15))):
        draws = _draw(600, 1, cfg)
        for k, p in draws:
            assert np.all(np.isfinite(k)) and abs(k.sum() - 1.0) < 1e-6
            assert k.shape == (p["size"], p["size"])
            assert p["size"] % 2 == 1 and cfg.kernel_size[0] <= p["size"] <= cfg.kernel_size[1]
            assert p["type"] in TYPES_WITH_SINC
            if p["type"] == "sinc":
                rng_c = cfg.sinc_cutoff_small if p["size"] < 13 else cfg.sinc_cutoff_large
                assert rng_c[0] <= p["cutoff"] <= rng_c[1]
                assert p["sigma_x"] is None and p["beta"] is None
                continue
            assert cfg.sigma[0] <= p["sigma_x"] <= cfg.sigma[1]
            assert cfg.sigma[0] <= p["sigma_y"] <= cfg.sigma[1]
            if p["type"].endswith("aniso"):
                assert -math.pi <= p["theta"] <= math.pi
            else:
                assert p["sigma_x"] == p["sigma_y"] and p["theta"] == 0.0
            if p["type"].startswith("generalized"):
                assert cfg.betag[0] <= p["beta"] <= cfg.betag[1]
            elif p["type"].startswith("plateau"):
                assert cfg.betap[0] <= p["beta"] <= cfg.betap[1]
            else:
                assert p["beta"] is None
        aniso = [p for _, p in draws if p["type"] in ("aniso", "generalized_aniso", "plateau_aniso")]
        assert np.mean([p["sigma_x"] != p["sigma_y"] for p in aniso]) > 0.95  # independent sigma_y draws
        thetas = np.array([p["theta"] for p in aniso])
        assert thetas.min() < -2.0 and thetas.max() > 2.0  # the whole rotation range is used
        sizes = {p["size"] for _, p in draws}
        assert sizes == set(range(cfg.kernel_size[0], cfg.kernel_size[1] + 1, 2))  # every odd size occurs
        sig = [p["sigma_x"] for _, p in draws if p["sigma_x"] is not None]
        # The draws fill the range (not stuck at one end).
        assert min(sig) < cfg.sigma[0] + 0.1 * (cfg.sigma[1] - cfg.sigma[0])
        assert max(sig) > cfg.sigma[1] - 0.1 * (cfg.sigma[1] - cfg.sigma[0])


def test_small_sinc_kernels_use_the_narrower_cutoff_range():
    cfg = K.KernelConfig(sinc_prob=1.0)
    draws = _draw(400, 5, cfg)
    small = [p["cutoff"] for _, p in draws if p["size"] < 13]
    large = [p["cutoff"] for _, p in draws if p["size"] >= 13]
    assert min(small) >= math.pi / 3 and min(large) >= math.pi / 5
    assert min(large) < math.pi / 3  # the wider range is actually used for large kernels


def test_same_seed_same_kernels_different_seed_differs():
    a = _draw(30, 123)
    b = _draw(30, 123)
    c = _draw(30, 124)
    for (ka, pa), (kb, pb) in zip(a, b):
        assert pa == pb
        np.testing.assert_array_equal(ka, kb)
    assert any(pa != pc for (_, pa), (_, pc) in zip(a, c))


def test_type_frequencies_match_configured_probabilities():
    cfg = K.KernelConfig()
    n = 2000
    counts = {t: 0 for t in TYPES_WITH_SINC}
    for _, p in _draw(n, 7, cfg):
        counts[p["type"]] += 1
    expected = {t: (1 - cfg.sinc_prob) * q for t, q in zip(cfg.kernel_types, cfg.kernel_probs)}
    expected["sinc"] = cfg.sinc_prob
    for t in TYPES_WITH_SINC:
        # Binomial std at n=2000 is <= 0.0112; 0.045 is about 4 std.
        assert abs(counts[t] / n - expected[t]) < 0.045, (t, counts[t] / n, expected[t])


def test_beta_split_sampling_half_below_one():
    cfg = K.KernelConfig(kernel_types=("generalized_iso", "plateau_iso"), kernel_probs=(0.5, 0.5), sinc_prob=0.0)
    draws = [p for _, p in _draw(1000, 3, cfg)]
    g = np.array([p["beta"] for p in draws if p["type"] == "generalized_iso"])
    assert 0.4 < np.mean(g < 1.0) < 0.6
    pl = np.array([p["beta"] for p in draws if p["type"] == "plateau_iso"])
    assert 0.4 < np.mean(pl == 1.0) < 0.6  # documented Real-ESRGAN quirk for the [1, 2] plateau range
    uni = K.KernelConfig(
        kernel_types=("plateau_iso",), kernel_probs=(1.0,), sinc_prob=0.0, beta_sampling="uniform"
    )
    pu = np.array([p["beta"] for _, p in _draw(300, 3, uni)])
    assert np.mean(pu == 1.0) == 0.0 and pu.min() >= 1.0 and pu.max() <= 2.0


def test_final_sinc_kernel():
    rng = np.random.default_rng(11)
    draws = [K.random_final_sinc_kernel(rng) for _ in range(1000)]
    frac = np.mean([p["type"] == "sinc" for _, p in draws])
    assert abs(frac - 0.8) < 0.05
    for k, p in draws:
        assert abs(k.sum() - 1.0) < 1e-6 and np.all(np.isfinite(k))
        if p["type"] == "sinc":
            assert math.pi / 3 <= p["cutoff"] <= math.pi and 7 <= p["size"] <= 21 and p["size"] % 2 == 1
        else:
            np.testing.assert_array_equal(k, K.identity_kernel(1))


def test_published_defaults():
    first, second = K.KernelConfig.first_order(), K.KernelConfig.second_order()
    assert first.kernel_size == (7, 21) and first.sigma == (0.2, 3.0) and second.sigma == (0.2, 1.5)
    assert first.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and first.kernel_types == K.KERNEL_TYPES
    assert first.betag == (0.5, 4.0) and first.betap == (1.0, 2.0) and first.sinc_prob == 0.1
    assert K.FinalSincConfig().prob == 0.8


def test_from_dict_overrides_and_rejects_unknown_keys():
    cfg = K.KernelConfig.from_dict({"sigma": [0.5, 1.0], "sinc_prob": 0}, base=K.KernelConfig.second_order())
    assert cfg.sigma == (0.5, 1.0) and cfg.sinc_prob == 0.0 and cfg.kernel_size == (7, 21)
    with pytest.raises(InputError, match="sigam"):
        K.KernelConfig.from_dict({"sigam": [0.5, 1.0]})
    with pytest.raises(InputError, match="bogus"):
        K.FinalSincConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"kernel_size": (8, 21)}, "kernel_size"),
        ({"kernel_size": (21, 7)}, "kernel_size"),
        ({"sigma": (3.0, 0.2)}, "sigma"),
        ({"sigma": (0.0, 3.0)}, "sigma"),
        ({"sigma": "wide"}, "sigma"),
        ({"kernel_probs": (0.5, 0.5, 0.0, 0.0, 0.0, 0.1)}, "kernel_probs"),
        ({"kernel_probs": (1.0,)}, "kernel_probs"),
        ({"kernel_types": ("iso", "box"), "kernel_probs": (0.5, 0.5)}, "kernel_types"),
        ({"rotation": (-4.0, 4.0)}, "rotation"),
        ({"betag": (2.0, 4.0)}, "betag"),
        ({"betap": (-1.0, 2.0)}, "betap"),
        ({"beta_sampling": "log"}, "beta_sampling"),
        ({"sinc_prob": 1.5}, "sinc_prob"),
        ({"sinc_cutoff_large": (0.1, 4.0)}, "sinc_cutoff_large"),
    ],
)
def test_bad_config_raises_input_error(kw, needle):
    with pytest.raises(InputError, match=needle):
        K.KernelConfig(**kw)


def test_bad_kernel_arguments_raise_input_error():
    with pytest.raises(InputError, match="odd"):
        K.gaussian_kernel(8, 1.0, 1.0)
    with pytest.raises(InputError, match="sigma"):
        K.gaussian_kernel(7, 0.0, 1.0)
    with pytest.raises(InputError, match="beta"):
        K.plateau_kernel(7, 1.0, 1.0, beta=0.0)
    with pytest.raises(InputError, match="cutoff"):
        K.sinc_kernel(7, 4.0)
    with pytest.raises(InputError, match="prob"):
        K.FinalSincConfig(prob=-0.1)
