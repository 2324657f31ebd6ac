"""Independent numpy (float64) references for the geometric methods, written from the papers' formulas and
mergekit 0.1.5's definitions, sharing no code with mergebench. Where mergekit's algorithm has a closed form
(multislerp), the reference follows the algorithm step by step, so the test checks the closed form too."""

from __future__ import annotations

import math

import numpy as np


def _rows(x: np.ndarray) -> np.ndarray:
    """Vectors along the last axis (a 1-D array is one vector)."""
    return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)


def model_stock(base, models, filter_wise=False):
    """Jang et al. 2024: θ = t·mean(θ_i) + (1 − t)·θ_0, t = k cos θ / (1 + (k − 1) cos θ)."""
    k = len(models)
    shape = base.shape
    view = _rows if filter_wise else (lambda x: x.reshape(1, -1))
    taus = [view(m - base) for m in models]
    cosines = []
    for a in range(k):
        for b in range(a + 1, k):
            dot = np.sum(taus[a] * taus[b], axis=1)
            norms = np.linalg.norm(taus[a], axis=1) * np.linalg.norm(taus[b], axis=1)
            cosines.append(np.clip(dot / np.maximum(norms, 1e-6), -1, 1))
    cos = np.mean(cosines, axis=0)
    denominator = 1 + (k - 1) * cos
    t = np.where(np.abs(denominator) < 1e-6, 0.0, k * cos / np.where(denominator == 0, 1, denominator))
    average = sum(models) / k
    out = t[:, None] * view(average) + (1 - t[:, None]) * view(base)
    return out.reshape(shape)


def slerp_rows(t, v0, v1):
    """Row-by-row SLERP of unnormalized vectors: (sin((1−t)Ω)·v0 + sin(tΩ)·v1)/sin Ω, linear where the rows
    are parallel (1 − cos² ≤ 1e-16); unit vectors with mergekit's floor ‖x‖ ≥ 1e-7."""
    out = np.empty_like(v0)
    for r in range(v0.shape[0]):
        a, b = v0[r], v1[r]
        ua = a / max(np.linalg.norm(a), 1e-7)
        ub = b / max(np.linalg.norm(b), 1e-7)
        cos = float(np.clip(np.dot(ua, ub), -1, 1))
        if 1 - cos * cos <= 1e-16:
            out[r] = (1 - t) * a + t * b
            continue
        omega = math.acos(cos)
        out[r] = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
    return out


def nuslerp(models, base, weights, row_wise=False, flatten=True):
    total = weights[0] + weights[1]
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    v0, v1 = (m - base for m in models) if base is not None else models
    shape = v0.shape
    if flatten:
        out = slerp_rows(t, v0.reshape(1, -1), v1.reshape(1, -1)).reshape(shape)
    elif row_wise:  # vectors along axis 0
        s0, s1 = np.swapaxes(v0, 0, -1), np.swapaxes(v1, 0, -1)
        out = np.swapaxes(slerp_rows(t, _rows(s0), _rows(s1)).reshape(s0.shape), 0, -1)
    else:
        out = slerp_rows(t, _rows(v0), _rows(v1)).reshape(shape)
    return out + base if base is not None else out


def multislerp(models, base, weights, normalize_weights=True, eps=1e-8):
    """mergekit's algorithm, step by step: unit vectors, their weighted mean m̂, tangent vectors at m̂,
    weighted tangent mean, exponential map back, times the weighted mean norm."""
    if len(models) == 1:
        return models[0]
    x = np.stack([m - base if base is not None else m for m in models]).reshape(len(models), -1)
    w = np.asarray(weights, dtype=np.float64)
    if normalize_weights:
        w = w / w.sum()
    norms = np.linalg.norm(x, axis=1)
    units = x / (norms[:, None] + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = np.linalg.norm(mean)
    if mean_norm < eps:
        out = (x * w[:, None]).sum(0)  # mergekit: two models only (else it raises)
    else:
        mean = mean / mean_norm
        dots = units @ mean
        tangents = units - dots[:, None] * mean
        tangent = (tangents * w[:, None]).sum(0)
        length = np.linalg.norm(tangent) + eps
        out = (mean * math.cos(length) + tangent * (math.sin(length) / length)) * (norms * w).sum()
    out = out.reshape(models[0].shape)
    return out + base if base is not None else out


def karcher(tensors, max_iter=10, tol=1e-5):
    """Weighted (uniform) Karcher mean on the unit sphere by fixed-point iteration, × mean norm."""
    if len(tensors) == 1:
        return tensors[0]
    n = len(tensors)
    flats = [t.reshape(-1) for t in tensors]
    norms = [float(np.linalg.norm(f)) for f in flats]
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return np.zeros_like(tensors[0])
    alphas = np.full(len(valid), 1.0 / len(valid))
    units = [flats[i] / norms[i] for i in valid]
    mean = sum(a * u for a, u in zip(alphas, units, strict=True))
    mean_norm = np.linalg.norm(mean)
    mean = units[0].copy() if mean_norm < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for a, u in zip(alphas, units, strict=True):
            cos = float(np.clip(np.dot(mean, u), -1, 1))
            theta = math.acos(cos)
            if theta < tol or theta == 0:
                continue
            tangent += a * theta / math.sin(theta) * (u - cos * mean)
        tangent_norm = float(np.linalg.norm(tangent))
        if tangent_norm < tol or tangent_norm == 0:
            break
        mean = math.cos(tangent_norm) * mean + math.sin(tangent_norm) * tangent / tangent_norm
        unit_norm = np.linalg.norm(mean)
        if unit_norm > tol:
            mean = mean / unit_norm
    return (sum(norms) / n * mean).reshape(tensors[0].shape)


def nearswap(base, other, t):
    weight = np.clip(t / np.maximum(np.abs(base - other), 1e-6), 0, 1)
    return weight * other + (1 - weight) * base


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def arcee_fusion(base, other):
    delta = other - base
    p = _softmax(_rows(other)) + 1e-8
    q = _softmax(_rows(base)) + 1e-8
    kl = np.sum(p * np.log(p / q), axis=-1, keepdims=True)
    importance = (np.abs(_rows(delta)) * kl).reshape(-1)
    ordered = np.sort(importance)
    last = importance.size - 1
    q1, median, q3 = (ordered[int(math.floor(q * last))] for q in (0.25, 0.5, 0.75))
    keep = importance >= median + 1.5 * (q3 - q1)
    return base + delta * keep.reshape(delta.shape)


def _ram(base, models, epsilon, boosts):
    taus = np.stack([m - base for m in models])
    changed = np.abs(taus) > epsilon
    count = changed.sum(0)
    merged = np.zeros_like(base)
    for tau, mask, boost in zip(taus, changed, boosts, strict=True):
        merged += np.where(mask & (count == 1), boost * tau, 0.0)
        merged += np.where(mask & (count > 1), tau / np.maximum(count, 1), 0.0)
    return base + merged


def ram(base, models, epsilon=1e-5):
    return _ram(base, models, epsilon, [1.0] * len(models))


def ramplus_tl(base, models, r=0.1, alpha=0.2, epsilon=1e-5):
    taus = np.stack([m - base for m in models])
    changed = np.abs(taus) > epsilon
    count = changed.sum(0)
    boosts = []
    for mask in changed:
        shared = int((mask & (count > 1)).sum())
        unique = int((mask & (count == 1)).sum())
        rho = shared / max(unique, epsilon)
        boosts.append(1 + r * min(max(rho, 0.0), alpha))
    return _ram(base, models, epsilon, boosts)
