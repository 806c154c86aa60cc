"""Darcy generator: the finite-difference solver, the thresholded random field, seeding, the cache."""

import numpy as np
import pytest

from amq_export.data import darcy, load_grid_file
from amq_export.data.darcy import darcy_coefficients, darcy_path, generate_darcy, solve_darcy, write_darcy_npz
from amq_export.errors import AMQError


def _operator(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """-div(a grad u) at the interior nodes, harmonic face averages, written out point by point."""
    r = a.shape[0]
    h2 = (1.0 / (r - 1)) ** 2
    out = np.zeros_like(u)
    for i in range(1, r - 1):
        for j in range(1, r - 1):
            total = 0.0
            for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                face = 2 * a[i, j] * a[i + di, j + dj] / (a[i, j] + a[i + di, j + dj])
                total += face * (u[i, j] - u[i + di, j + dj])
            out[i, j] = total / h2
    return out


def test_constant_coefficient_recovers_discrete_eigenfunction() -> None:
    # sin(pi x) sin(pi y) is an eigenvector of the 5-point Laplacian: the discrete solution is exact
    r = 17
    h = 1.0 / (r - 1)
    g = np.linspace(0.0, 1.0, r)
    exact = np.sin(np.pi * g)[:, None] * np.sin(np.pi * g)[None, :]
    eigenvalue = 8.0 / h**2 * np.sin(np.pi * h / 2) ** 2
    u = solve_darcy(np.full((r, r), 2.5), 2.5 * eigenvalue * exact)
    assert np.abs(u - exact).max() < 1e-6


def test_variable_coefficient_matches_pointwise_operator() -> None:
    rng = np.random.default_rng(3)
    r = 9
    a = darcy_coefficients(1, r, seed=5)[0].astype(np.float64)
    u_true = np.zeros((r, r))
    u_true[1:-1, 1:-1] = rng.random((r - 2, r - 2))
    u = solve_darcy(a, _operator(a, u_true))
    assert np.abs(u - u_true).max() < 1e-5


def test_generated_samples_have_the_recipe_properties() -> None:
    a, u = generate_darcy(6, 16, seed=1)
    assert a.shape == u.shape == (6, 16, 16) and a.dtype == u.dtype == np.float32
    assert set(np.unique(a).tolist()) == {3.0, 12.0}
    boundary = np.ones((16, 16), dtype=bool)
    boundary[1:-1, 1:-1] = False
    assert np.all(u[:, boundary] == 0)
    assert np.all(u[:, 1:-1, 1:-1] > 0)
    # both phases occur overall (the field is zero-mean)
    assert 0.2 < (a == 12).mean() < 0.8


def test_seeding_is_per_sample_and_reproducible() -> None:
    a5, u5 = generate_darcy(5, 12, seed=7)
    a2, u2 = generate_darcy(2, 12, seed=7)
    np.testing.assert_array_equal(a5[:2], a2)
    np.testing.assert_array_equal(u5[:2], u2)
    a_other, _ = generate_darcy(2, 12, seed=8)
    assert not np.array_equal(a_other, a2)
    assert not np.array_equal(a5[0], a5[1])


def test_bad_arguments_raise() -> None:
    with pytest.raises(AMQError, match="resolution"):
        generate_darcy(2, 3)
    with pytest.raises(AMQError, match="seed"):
        generate_darcy(2, 8, seed=-1)
    with pytest.raises(AMQError, match="positive"):
        solve_darcy(np.zeros((8, 8)))


def test_cache_generates_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AMQ_CACHE_DIR", str(tmp_path / "env-cache"))
    path = darcy_path(3, 8, seed=2)
    assert path.parent == tmp_path / "env-cache"
    with np.load(path) as f:
        x, y = f["x"], f["y"]
        assert int(f["resolution"]) == 8 and str(f["face_average"]) == "harmonic"
    a, u = generate_darcy(3, 8, seed=2)
    np.testing.assert_array_equal(x, a)
    np.testing.assert_array_equal(y, u)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached file")

    monkeypatch.setattr(darcy, "generate_darcy", fail)
    assert darcy_path(3, 8, seed=2) == path
    assert not list(path.parent.glob("*.tmp"))


def test_write_darcy_npz_is_a_loadable_grid_file(tmp_path) -> None:
    path = write_darcy_npz(tmp_path / "darcy.npz", resolution=8, samples=3, seed=4)
    x, y = load_grid_file(path)
    a, u = generate_darcy(3, 8, seed=4)
    np.testing.assert_array_equal(x, a)
    np.testing.assert_array_equal(y, u)
    with pytest.raises(AMQError, match=".npz"):
        write_darcy_npz(tmp_path / "darcy.csv", resolution=8, samples=1)
