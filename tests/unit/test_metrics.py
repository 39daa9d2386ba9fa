"""The evaluation math, pinned against closed forms and known limits."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from pipelines.evaluation.metrics import (
    clap_score,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kl_divergence,
    softmax,
    trace_sqrt_product,
)


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_gaussian_stats_matches_numpy():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(200, 16))
    mu, sigma = gaussian_stats(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_equals_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.5, -1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 12), _random_cov(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    reference = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-9)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * reference
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_grows_monotonically_with_added_noise():
    rng = np.random.default_rng(3)
    clean = rng.normal(size=(400, 8))
    noise = rng.normal(size=(400, 8))
    mu0, s0 = gaussian_stats(clean)
    distances = [frechet_distance(mu0, s0, *gaussian_stats(clean + level * noise)) for level in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert distances[0] == pytest.approx(0.0, abs=1e-9)
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_frechet_is_stable_for_rank_deficient_covariances():
    rng = np.random.default_rng(4)
    d = 64
    a, b = rng.normal(size=(10, d)), rng.normal(size=(12, d)) + 0.3    # N < D: singular covariances
    (mu_a, s_a), (mu_b, s_b) = gaussian_stats(a), gaussian_stats(b)
    assert np.linalg.matrix_rank(s_a) < d
    value = frechet_distance(mu_a, s_a, mu_b, s_b)
    assert np.isfinite(value) and value > 0
    assert frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-8)
    # The distance is invariant under a rotation of the embedding space applied to both sets.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(*gaussian_stats(a @ q), *gaussian_stats(b @ q))
    assert rotated == pytest.approx(value, rel=1e-8)
    # Exactly singular diagonal covariances still match the closed form.
    s1, s2 = np.array([1.0, 2.0, 0.0, 0.0]), np.array([0.0, 3.0, 0.0, 4.0])
    expected = np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(np.zeros(4), np.diag(s1), np.zeros(4), np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kl_of_identical_distributions_is_zero_and_positive_otherwise():
    rng = np.random.default_rng(5)
    p = softmax(rng.normal(size=(20, 527)), temperature=0.5)
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    q = softmax(rng.normal(size=(20, 527)), temperature=0.5)
    assert kl_divergence(p, q) > 0.1


def test_kl_matches_hand_computation_and_direction():
    p_ref = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05]])
    p_gen = np.array([[0.25, 0.25, 0.5], [0.2, 0.4, 0.4]])
    row0 = 0.5 * np.log(0.5 / 0.25) * 2
    row1 = 0.9 * np.log(0.9 / 0.2) + 2 * 0.05 * np.log(0.05 / 0.4)
    assert kl_divergence(p_ref, p_gen) == pytest.approx((row0 + row1) / 2, rel=1e-12)
    assert kl_divergence(p_gen, p_ref) != pytest.approx(kl_divergence(p_ref, p_gen))
    with pytest.raises(ValueError):
        kl_divergence(p_ref, p_gen[:1])


def test_inception_score_limits():
    c = 10
    uniform = np.full((40, c), 1.0 / c)
    mean, std = inception_score(uniform)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == 0.0
    confident = np.eye(c)[np.arange(40) % c]          # one-hot, each class equally often
    assert inception_score(confident)[0] == pytest.approx(c, rel=1e-12)
    mean, std = inception_score(confident, splits=4)  # each split of 10 still covers every class
    assert mean == pytest.approx(c, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    always_same = np.eye(c)[np.zeros(40, dtype=int)]  # confident but no diversity
    assert inception_score(always_same)[0] == pytest.approx(1.0, abs=1e-12)


def test_clap_score():
    rng = np.random.default_rng(6)
    v = rng.normal(size=(8, 32))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert clap_score(v, v) == pytest.approx(1.0, abs=1e-12)
    assert clap_score(v, -v) == pytest.approx(-1.0, abs=1e-12)
    assert clap_score(v, 3.0 * v) == pytest.approx(1.0, abs=1e-12)  # cosine ignores scale
    w = rng.normal(size=(8, 32))
    expected = np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(v, w)])
    assert clap_score(v, w) == pytest.approx(expected, rel=1e-12)
