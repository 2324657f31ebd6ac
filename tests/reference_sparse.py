"""Independent numpy (float64) references for the sparsifying merges — Model Breadcrumbs, DELLA, SCE —
written from the papers' formulas with mergekit 0.1.5's counting rules, sharing no code with mergebench.

Conventions the implementations must share with these references (they are the methods' documented
contract, not implementation details):
  * counts are ⌊fraction·n⌋ of the decimal written (0.29·100 = 29);
  * magnitude / variance orders break ties by flat index: in descending order the lower index first;
  * DELLA's randomness is given as uniforms U (one per entry per model): entry kept when U < p;
  * those uniforms (DARE's too) are ``counter_uniforms``: a keyed triple32 hash of the flat position,
    written here in numpy uint32 arithmetic (wrap-around defined), mergebench in torch int64.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

import numpy as np

from tests.reference import elect_and_merge


def floor_count(fraction: float, n: int) -> int:
    """⌊fraction·n⌋ with fraction read as the shortest decimal that prints it."""
    if fraction >= 1:
        return n
    return min(n, int((Decimal(repr(float(fraction))) * n).to_integral_value(rounding="ROUND_FLOOR")))


def descending_order(values: np.ndarray) -> np.ndarray:
    """Flat indices by descending value; equal values: lower index first."""
    flat = values.ravel()
    return np.lexsort((np.arange(flat.size), -flat))


# ------------------------------------------------------------------------------------------------
# DARE's and DELLA's uniforms


def counter_uniforms(numel: int, seed: int, name: str, model_index: int, offset: int = 0) -> np.ndarray:
    """float32 U_j for flat positions j in [offset, offset + numel) of model ``model_index``: the top
    24 bits of triple32 (hash-prospector) of (j mod 2³²) + k0, k1 xored in after its first multiply,
    × 2⁻²⁴; (k0, k1) the 32-bit halves of SplitMix64's output number j ÷ 2³² (from 0) when seeded
    with the first 8 bytes (little-endian) of sha256(repr((seed, name, model_index)))."""
    mask64 = (1 << 64) - 1
    stream = int.from_bytes(hashlib.sha256(repr((seed, name, model_index)).encode()).digest()[:8], "little")
    positions = np.arange(offset, offset + numel, dtype=np.uint64)
    segments = positions >> np.uint64(32)
    out = np.empty(numel, dtype=np.float32)
    u32 = np.uint32
    for segment in np.unique(segments):
        z = (stream + (int(segment) + 1) * 0x9E3779B97F4A7C15) & mask64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        z ^= z >> 31
        k0, k1 = u32(z & 0xFFFFFFFF), u32(z >> 32)
        here = segments == segment
        with np.errstate(over="ignore"):
            x = (positions[here] & np.uint64(0xFFFFFFFF)).astype(u32) + k0
            x ^= x >> u32(17)
            x *= u32(0xED5AD4BB)
            x ^= k1
            x ^= x >> u32(11)
            x *= u32(0xAC4C1B51)
            x ^= x >> u32(15)
            x *= u32(0x31848BAB)
            x ^= x >> u32(14)
        out[here] = (x >> u32(8)).astype(np.float32) * np.float32(2.0**-24)
    return out


# ------------------------------------------------------------------------------------------------
# Model Breadcrumbs (Davari & Belilovsky 2023)


def breadcrumbs_mask(tau: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Sort |τ| ascending; drop the bottom n − keep − top and the top ⌊gamma·n⌋ (fewer if density +
    gamma > 1), keep ⌊density·n⌋ in between."""
    n = tau.size
    if density >= 1:
        return np.ones(tau.shape, dtype=bool)
    keep = floor_count(density, n)
    top = floor_count(gamma, n)
    bottom = max(0, n - keep - top)
    ascending = descending_order(np.abs(tau))[::-1]
    mask = np.zeros(n, dtype=bool)
    mask[ascending[bottom : bottom + keep]] = True
    return mask.reshape(tau.shape)


def l1_rescaled(tau: np.ndarray, mask: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """τ·mask scaled to τ's L1 norm (mergekit's rescale); untouched when either norm is below eps."""
    kept = np.where(mask, tau, 0.0)
    before, after = np.abs(tau).sum(), np.abs(kept).sum()
    return kept if before < eps or after < eps else kept * (before / after)


def combine(base, sparse, weights, lam, normalize, ties):
    """θ_base + λ·(TIES disjoint merge | Σ) of the weighted sparse task vectors."""
    weighted = [w * t for w, t in zip(weights, sparse, strict=True)]
    if ties:
        update = elect_and_merge(weighted, weights, normalize)
    else:
        update = sum(weighted)
        if normalize:
            update = update / sum(weights)
    return base + lam * update


def breadcrumbs(
    base, models, weights, densities, gammas, lam=1.0, normalize=False, rescale=False, ties=False
):
    sparse = []
    for m, d, g in zip(models, densities, gammas, strict=True):
        tau = m - base
        mask = breadcrumbs_mask(tau, d, g)
        if d >= 1:
            sparse.append(tau)
        else:
            sparse.append(l1_rescaled(tau, mask) if rescale else np.where(mask, tau, 0.0))
    return combine(base, sparse, weights, lam, normalize, ties)


# ------------------------------------------------------------------------------------------------
# DELLA / MAGPRUNE (Deep et al. 2024)


def magprune_probabilities(tau: np.ndarray, density: float, epsilon: float) -> np.ndarray:
    """Keep probability per entry: in each row (a 1-D tensor is one row) the entry of ascending
    magnitude rank r among m gets density − ε + 2ε·r/(m − 1); equal magnitudes: lower index first."""
    rows = tau.reshape(1, -1) if tau.ndim < 2 else tau.reshape(tau.shape[0], tau.shape[1], -1)
    rows = rows if rows.ndim == 3 else rows[:, :, None]
    m = rows.shape[1]
    p = np.empty(rows.shape)
    for i in range(rows.shape[0]):
        for k in range(rows.shape[2]):
            column = np.abs(rows[i, :, k])
            order = np.lexsort((np.arange(m), column))  # ascending, ties by index
            rank = np.empty(m)
            rank[order] = np.arange(m)
            p[i, :, k] = density if m == 1 else density - epsilon + 2 * epsilon * rank / (m - 1)
    return p.reshape(tau.shape)


def magprune(tau, uniform, density, epsilon, rescale=True, rescale_l1=False):
    """Keep entry j when U_j < p_j; survivors ÷ p_j (paper) or the whole vector to its L1 norm."""
    if density >= 1:
        return tau
    p = magprune_probabilities(tau, density, epsilon)
    keep = uniform < p
    if rescale and rescale_l1:
        return l1_rescaled(tau, keep)
    if rescale:
        return np.where(keep, tau / p, 0.0)
    return np.where(keep, tau, 0.0)


def della(
    base,
    models,
    weights,
    densities,
    epsilons,
    uniforms,
    lam=1.0,
    normalize=True,
    rescale=True,
    rescale_l1=False,
    ties=True,
):
    sparse = [
        magprune(m - base, u, d, e, rescale, rescale_l1)
        for m, u, d, e in zip(models, uniforms, densities, epsilons, strict=True)
    ]
    return combine(base, sparse, weights, lam, normalize, ties)


# ------------------------------------------------------------------------------------------------
# SCE (Wan et al. 2025, FuseChat): select, calculate, erase


def sce(base, models, select_topk=1.0):
    taus = np.stack([m - base for m in models])
    if select_topk < 1:
        var = taus.var(axis=0)  # population variance across models
        k = floor_count(select_topk, int(np.count_nonzero(var)))
        mask = np.zeros(var.size, dtype=bool)
        mask[descending_order(var)[:k]] = True
        taus = taus * mask.reshape(var.shape)
    energy = (taus**2).reshape(len(models), -1).mean(axis=1)
    weights = np.full(len(models), 1 / len(models)) if abs(energy.sum()) < 1e-6 else energy / energy.sum()
    majority = np.where(taus.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(taus) == majority
    w = weights.reshape(-1, *([1] * (taus.ndim - 1)))
    numerator = (taus * w * agree).sum(axis=0)
    denominator = np.maximum((w * agree).sum(axis=0), 1e-6)
    return base + numerator / denominator
