"""Independent reference implementations of the merge formulas, written from the papers in numpy
(float64), sharing no code with mergebench."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def linear(models, weights, normalize=True):
    total = sum(w * m for w, m in zip(weights, models, strict=True))
    return total / sum(weights) if normalize else total


def task_arithmetic(base, models, weights, lam=1.0, normalize=False):
    update = sum(w * (m - base) for w, m in zip(weights, models, strict=True))
    if normalize:
        update = update / sum(weights)
    return base + lam * update


def trim_top_k(tau, density):
    """Keep the max(1, ⌊density·n⌋) largest |τ| entries (mergekit's count, with density read as the
    decimal written: 0.29·100 → 29); equal magnitudes: lower flat index first."""
    flat = tau.ravel()
    n = flat.size
    k = n if density >= 1 else min(n, max(1, math.floor(Fraction(repr(float(density))) * n)))
    order = np.lexsort((np.arange(n), -np.abs(flat)))
    keep = np.zeros(n, dtype=bool)
    keep[order[:k]] = True
    return np.where(keep, flat, 0.0).reshape(tau.shape)


def elect_and_merge(weighted, weights, normalize):
    total = sum(weighted)
    sign = np.sign(total)
    numerator = np.zeros_like(total)
    denominator = np.zeros_like(total)
    for t, w in zip(weighted, weights, strict=True):
        agree = (np.sign(t) == sign) & (t != 0)
        numerator += np.where(agree, t, 0.0)
        denominator += np.where(agree, w, 0.0)
    if normalize:
        denominator[denominator == 0] = 1.0
        return numerator / denominator
    return numerator


def ties(base, models, weights, densities, lam=1.0, normalize=True):
    weighted = [w * trim_top_k(m - base, d) for m, w, d in zip(models, weights, densities, strict=True)]
    return base + lam * elect_and_merge(weighted, weights, normalize)


def dare(tau, keep_mask, density, rescale=True):
    kept = np.where(keep_mask, tau, 0.0)
    return kept / density if rescale else kept


def dare_linear(base, models, weights, densities, masks, lam=1.0, normalize=False):
    update = sum(
        w * dare(m - base, k, d) for m, w, d, k in zip(models, weights, densities, masks, strict=True)
    )
    if normalize:
        update = update / sum(weights)
    return base + lam * update


def dare_ties(base, models, weights, densities, masks, lam=1.0, normalize=False):
    weighted = [
        w * dare(m - base, k, d) for m, w, d, k in zip(models, weights, densities, masks, strict=True)
    ]
    return base + lam * elect_and_merge(weighted, weights, normalize)


def slerp(v0, v1, t):
    a, b = v0.ravel().astype(np.float64), v1.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-8 or nb < 1e-8:
        return (1 - t) * v0 + t * v1
    cos = float(np.dot(a / na, b / nb))
    if abs(cos) > 0.9995:
        return (1 - t) * v0 + t * v1
    omega = math.acos(cos)
    return (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)
