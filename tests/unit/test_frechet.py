"""Fréchet distance: agreement with StyleGAN-V's scipy.sqrtm formula (rtol 1e-9) and exact properties."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from echo_core.metrics.frechet import frechet_distance, frechet_distance_sqrtm, frechet_distance_with_info


def sgv_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """StyleGAN-V's formula, re-implemented independently here (scipy sqrtm of the product, real part)."""
    m = np.square(mu1 - mu2).sum()
    s = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    return float(np.real(m + np.trace(sigma1 + sigma2 - s * 2)))


def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Population (ddof 0) moments, as StyleGAN-V's FeatureStats."""
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=0)


def realistic_features(rng, n: int, d: int, shift: float) -> np.ndarray:
    """Non-negative, correlated, non-Gaussian features (like pool3 after ReLU/avg-pool)."""
    w = rng.standard_normal((d // 2, d)) / np.sqrt(d // 2)
    return np.abs(rng.standard_normal((n, d // 2)) @ w + shift)


def test_agrees_with_stylegan_v_formula_well_conditioned_64d():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((500, 64)), 1.3 * rng.standard_normal((500, 64)) + 0.2
    args = (*stats(a), *stats(b))
    assert frechet_distance(*args) == pytest.approx(sgv_frechet(*args), rel=1e-9)


@pytest.mark.parametrize("d,n,shift", [(400, 2048, 0.3), (256, 1500, 0.0)])
def test_agrees_with_stylegan_v_formula_realistic(d, n, shift):
    rng = np.random.default_rng(d)
    args = (*stats(realistic_features(rng, n, d, 0.1)), *stats(realistic_features(rng, n, d, shift)))
    fd, info = frechet_distance_with_info(*args)
    assert info.method == "cholesky-eigh"
    assert fd == pytest.approx(sgv_frechet(*args), rel=1e-9)


def test_oracle_in_module_is_stylegan_v_formula():
    rng = np.random.default_rng(1)
    args = (*stats(rng.standard_normal((300, 32))), *stats(rng.standard_normal((300, 32)) * 2))
    assert frechet_distance_sqrtm(*args) == pytest.approx(sgv_frechet(*args), rel=1e-12)


def test_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = stats(rng.standard_normal((400, 48))), stats(2 * rng.standard_normal((400, 48)) + 1)
    assert frechet_distance(*s1, *s2) == pytest.approx(frechet_distance(*s2, *s1), rel=1e-12)


def test_zero_for_identical_statistics():
    rng = np.random.default_rng(3)
    mu, sigma = stats(rng.standard_normal((400, 64)))
    fd = frechet_distance(mu, sigma, mu, sigma)
    assert abs(fd) < 1e-10 * np.trace(sigma)


def test_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_singular_covariances_use_eigh_fallback_and_match_sgv_loosely():
    rng = np.random.default_rng(5)
    # N = 40 < d = 64: both covariances are singular, Cholesky fails on both.
    args = (*stats(rng.standard_normal((40, 64))), *stats(rng.standard_normal((40, 64)) + 0.5))
    fd, info = frechet_distance_with_info(*args)
    assert info.method == "eigh"
    # The square root of a singular product is ill-conditioned: methods agree to ~1e-8, not 1e-14.
    assert fd == pytest.approx(sgv_frechet(*args), rel=1e-6)


def test_one_singular_side_uses_cholesky_of_the_other():
    rng = np.random.default_rng(6)
    full, singular = stats(rng.standard_normal((500, 32))), stats(rng.standard_normal((10, 32)))
    fd, info = frechet_distance_with_info(*singular, *full)
    assert info.method == "cholesky-eigh"
    assert fd == pytest.approx(sgv_frechet(*singular, *full), rel=1e-7)


def test_rejects_bad_shapes_and_non_finite():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


def test_zero_covariance_single_sample_per_side():
    """One clip per side gives an all-zero covariance: FD = |mu1 - mu2|^2 + tr(S2), no crash."""
    import numpy as np

    from echo_core.metrics.frechet import frechet_distance

    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a = rng.normal(size=(8, 3))
    s2 = a @ a.T
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s2))
    assert np.isclose(frechet_distance(mu1, np.zeros((8, 8)), mu2, s2), expected, rtol=1e-12)
    assert np.isclose(frechet_distance(mu1, np.zeros((8, 8)), mu2, np.zeros((8, 8))), (mu1 - mu2) @ (mu1 - mu2))
