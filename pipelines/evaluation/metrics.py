"""Evaluation math: Fréchet distance, KL, Inception Score, CLAP score (pure numpy, float64).

Inputs are embeddings or class probabilities; which model produced them is the caller's business
(see pipelines/evaluation/evaluator.py and docs/evaluation.md).
"""
from __future__ import annotations

import numpy as np

# Floor for log(p): softmax probabilities are never exactly 0, but one-hot or sigmoid rows can be.
_LOG_FLOOR = 1e-12


def gaussian_stats(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of embeddings [N, D] (N = 1 gives a zero covariance)."""
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be [N, D] with N >= 1, got {x.shape}")
    mu = x.mean(axis=0)
    if x.shape[0] == 1:
        return mu, np.zeros((x.shape[1], x.shape[1]))
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh; rounding-level negative eigenvalues clip to 0."""
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) computed as tr(sqrt(sqrt(S1) S2 sqrt(S1))).

    S1 S2 is not symmetric, so a general sqrtm on it can return complex noise or fail for
    rank-deficient covariances. sqrt(S1) S2 sqrt(S1) is similar to S1 S2 (same eigenvalues) and
    symmetric PSD, so eigh on it is stable; tiny negative eigenvalues from rounding are clipped.
    """
    root1 = _sqrt_psd(np.asarray(sigma1, dtype=np.float64))
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    vals = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: ||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)).

    Floored at 0: it is a squared distance, and a rounding-level negative result means "equal".
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_probs(p: np.ndarray, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be [N, C] probabilities, got shape {p.shape}")
    if np.any(p < 0) or not np.all(np.isfinite(p)):
        raise ValueError(f"{name} has negative or non-finite probabilities")
    return p


def kl_divergence(p_ref: np.ndarray, p_gen: np.ndarray) -> float:
    """Mean over paired clips of KL(p_ref_i || p_gen_i) = sum_c p_ref log(p_ref / p_gen).

    Rows are softmax label distributions (audioldm_eval's "KL", not its "KL_Sigmoid"); row i of each
    is the same prompt. Terms with p_ref = 0 contribute 0; p_gen is floored at 1e-12 before the log.
    """
    p_ref, p_gen = _check_probs(p_ref, "p_ref"), _check_probs(p_gen, "p_gen")
    if p_ref.shape != p_gen.shape:
        raise ValueError(f"paired distributions must have the same shape: {p_ref.shape} vs {p_gen.shape}")
    log_ratio = np.log(np.clip(p_ref, _LOG_FLOOR, None)) - np.log(np.clip(p_gen, _LOG_FLOOR, None))
    terms = np.where(p_ref > 0, p_ref * log_ratio, 0.0)
    return float(terms.sum(axis=1).mean())


def inception_score(p: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """IS = exp(E_i KL(p_i || mean_j p_j)) per split; returns (mean, std) over the splits.

    1 for a classifier that says the same thing for every clip, C for confident and evenly spread labels.
    """
    p = _check_probs(p, "p")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, {n}], got {splits}")
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        marginal = chunk.mean(axis=0, keepdims=True)
        log_ratio = np.log(np.clip(chunk, _LOG_FLOOR, None)) - np.log(np.clip(marginal, _LOG_FLOOR, None))
        kl = np.where(chunk > 0, chunk * log_ratio, 0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def clap_score(text_emb: np.ndarray, audio_emb: np.ndarray) -> float:
    """Mean cosine similarity of paired (text_i, audio_i) embeddings in CLAP's joint space."""
    t = np.asarray(text_emb, dtype=np.float64)
    a = np.asarray(audio_emb, dtype=np.float64)
    if t.shape != a.shape or t.ndim != 2:
        raise ValueError(f"paired embeddings must both be [N, E]: {t.shape} vs {a.shape}")
    t = t / np.linalg.norm(t, axis=1, keepdims=True).clip(1e-12)
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    return float((t * a).sum(axis=1).mean())
