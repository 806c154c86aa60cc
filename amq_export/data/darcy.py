"""2D Darcy flow data following the FNO recipe (Li et al., 2021), generated locally and cached.

Coefficient: a Gaussian random field with covariance ``(-Laplacian + tau^2 I)^-alpha`` (alpha = 2,
tau = 3), sampled spectrally as in the FNO data scripts (``GRF.m``: cosine modes, inverse DCT),
thresholded to ``a = 12`` where the field is >= 0 and ``a = 3`` elsewhere.
Solution: ``-div(a grad u) = f`` on the unit square with ``f = 1`` and ``u = 0`` on the boundary,
5-point finite differences on the grid nodes with *harmonic* face averages of ``a`` (exact flux
continuity across the jumps of a piecewise-constant coefficient), one sparse LU solve per sample.

Arrays cover the full grid, boundary included: ``a`` and ``u`` are (S, R, R) float32, grid spacing
``1 / (R - 1)``. Sample ``i`` of seed ``s`` depends only on ``(s, i)``, not on how many samples
are drawn in one call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg

from amq_export.data.cache import resolve_cache_dir
from amq_export.errors import AMQError
from amq_export.safe_io import atomic_write

ALPHA = 2.0
TAU = 3.0
A_POSITIVE = 12.0
A_NEGATIVE = 3.0
# bump when the generated arrays change, so stale cache files are not reused
DARCY_VERSION = 1


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or resolution < 4:
        raise AMQError(
            f"Darcy resolution must be an integer >= 4, got {resolution!r}; pass e.g. resolution=32"
        )


def gaussian_random_field(
    n_samples: int, resolution: int, seed: int = 0, *, alpha: float = ALPHA, tau: float = TAU
) -> np.ndarray:
    """(S, R, R) float64 fields of covariance ``(-Laplacian + tau^2 I)^-alpha`` (Neumann cosine modes).

    As ``GRF.m``: mode ``k`` gets ``R * tau^(alpha-1) * (pi^2 |k|^2 + tau^2)^(-alpha/2) * xi_k`` with
    ``xi_k ~ N(0, 1)``, the constant mode is zeroed, and an orthonormal inverse DCT maps to the grid.
    """
    _check_resolution(resolution)
    k = np.arange(resolution)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    coef = tau ** (alpha - 1) * (np.pi**2 * k2 + tau**2) ** (-alpha / 2)
    coef[0, 0] = 0.0  # zero-mean field, as in GRF.m
    xi = np.empty((n_samples, resolution, resolution))
    for i in range(n_samples):
        xi[i] = np.random.default_rng([seed, i]).standard_normal((resolution, resolution))
    return scipy.fft.idctn(resolution * coef * xi, type=2, norm="ortho", axes=(1, 2))


def darcy_coefficients(n_samples: int, resolution: int, seed: int = 0) -> np.ndarray:
    """(S, R, R) float32 thresholded coefficients, values exactly 12 and 3."""
    field = gaussian_random_field(n_samples, resolution, seed)
    return np.where(field >= 0, A_POSITIVE, A_NEGATIVE).astype(np.float32)


def _stencil_pattern(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSC structure of the n*n interior system and the map from our value order to CSC order.

    Value order: n*n diagonal entries, then each east-west pair twice (p->q, q->p), then each
    north-south pair twice.
    """
    idx = np.arange(n * n).reshape(n, n)
    ew_p, ew_q = idx[:, :-1].ravel(), idx[:, 1:].ravel()
    ns_p, ns_q = idx[:-1, :].ravel(), idx[1:, :].ravel()
    rows = np.concatenate([idx.ravel(), ew_p, ew_q, ns_p, ns_q])
    cols = np.concatenate([idx.ravel(), ew_q, ew_p, ns_q, ns_p])
    order = scipy.sparse.coo_matrix((np.arange(rows.size) + 1.0, (rows, cols)), shape=(n * n, n * n)).tocsc()
    order.sort_indices()
    return order.indptr, order.indices, order.data.astype(np.int64) - 1


def solve_darcy(a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
    """Solve ``-div(a grad u) = f``, ``u = 0`` on the boundary, for each (R, R) coefficient in ``a``.

    ``a``: (S, R, R) or (R, R), positive; ``f``: scalar or broadcastable to ``a``'s shape (only its
    interior values matter). Returns ``u`` with ``a``'s shape, float32, zero on the boundary.
    """
    a = np.asarray(a, dtype=np.float64)
    single = a.ndim == 2
    a = a[None] if single else a
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[1] < 3:
        raise AMQError(f"Darcy coefficient must have shape (S, R, R) with R >= 3, got {a.shape}")
    if not np.all(a > 0):
        raise AMQError("Darcy coefficient must be positive everywhere")
    s, r = a.shape[0], a.shape[1]
    n, h2 = r - 2, (1.0 / (r - 1)) ** 2
    fb = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape)

    east = 2 * a[:, :, :-1] * a[:, :, 1:] / (a[:, :, :-1] + a[:, :, 1:])  # face (i, j)-(i, j+1)
    south = 2 * a[:, :-1, :] * a[:, 1:, :] / (a[:, :-1, :] + a[:, 1:, :])  # face (i, j)-(i+1, j)
    diag = east[:, 1:-1, 1:] + east[:, 1:-1, :-1] + south[:, 1:, 1:-1] + south[:, :-1, 1:-1]
    ew = -east[:, 1:-1, 1:-1].reshape(s, -1)
    ns = -south[:, 1:-1, 1:-1].reshape(s, -1)
    values = np.concatenate([diag.reshape(s, -1), ew, ew, ns, ns], axis=1) / h2

    indptr, indices, perm = _stencil_pattern(n)
    rhs = fb[:, 1:-1, 1:-1].reshape(s, -1)
    u = np.zeros((s, r, r), dtype=np.float64)
    for i in range(s):
        matrix = scipy.sparse.csc_matrix((values[i, perm], indices, indptr), shape=(n * n, n * n))
        lu = scipy.sparse.linalg.splu(matrix, permc_spec="MMD_AT_PLUS_A")
        u[i, 1:-1, 1:-1] = lu.solve(rhs[i]).reshape(n, n)
    u = u.astype(np.float32)
    return u[0] if single else u


def generate_darcy(n_samples: int, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(a, u)``: (S, R, R) float32 coefficients and solutions."""
    if not isinstance(n_samples, int) or n_samples < 0:
        raise AMQError(f"number of Darcy samples must be a non-negative integer, got {n_samples!r}")
    if not isinstance(seed, int) or seed < 0:
        raise AMQError(f"seed must be a non-negative integer, got {seed!r}")
    a = darcy_coefficients(n_samples, resolution, seed)
    return a, solve_darcy(a)


def write_darcy_npz(
    out: str | os.PathLike[str], *, resolution: int = 32, samples: int = 1000, seed: int = 0
) -> Path:
    """Generate ``samples`` Darcy samples into the ``.npz`` ``out`` (keys ``x`` = a, ``y`` = u, metadata)."""
    path = Path(out).expanduser()
    if path.suffix != ".npz":
        raise AMQError(f"Darcy data is written as .npz, got {path}; pass a path ending in .npz")
    a, u = generate_darcy(samples, resolution, seed)

    def write(f: BinaryIO) -> None:
        np.savez(
            f,
            x=a,
            y=u,
            resolution=resolution,
            seed=seed,
            alpha=ALPHA,
            tau=TAU,
            a_values=np.array([A_NEGATIVE, A_POSITIVE]),
            face_average="harmonic",
            version=DARCY_VERSION,
        )

    atomic_write(path, write)
    return path


def darcy_path(
    n_samples: int, resolution: int = 32, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Path of a cached ``.npz`` as :func:`write_darcy_npz` writes it, generated on first use."""
    path = resolve_cache_dir(cache_dir) / f"darcy-v{DARCY_VERSION}-r{resolution}-n{n_samples}-s{seed}.npz"
    if not path.exists():
        write_darcy_npz(path, resolution=resolution, samples=n_samples, seed=seed)
    return path
