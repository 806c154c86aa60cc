"""User grid files (every bad input is an AMQError) and the cached mesh datasets."""

import pickle

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from amq_export.data import MeshData, load_grid_file, load_mesh_dataset
from amq_export.data import datasets as datasets_module
from amq_export.errors import AMQError


def _grids(s: int = 4, r: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((s, r, r)).astype(np.float32), rng.random((s, r, r)).astype(np.float32)


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): a stand-in for arbitrary code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loads_npz_and_pt_with_channel_axis(tmp_path) -> None:
    x, y = _grids()
    np.savez(tmp_path / "d.npz", x=x, y=y[..., None])
    torch.save({"x": torch.from_numpy(x).double(), "y": torch.from_numpy(y)}, tmp_path / "d.pt")
    for name in ("d.npz", "d.pt"):
        lx, ly = load_grid_file(tmp_path / name)
        assert lx.dtype == ly.dtype == np.float32 and lx.shape == ly.shape == (4, 6, 6)
        np.testing.assert_array_equal(lx, x)
        np.testing.assert_array_equal(ly, y)
    lx, _ = load_grid_file(tmp_path / "d.npz", n_samples=2)
    assert lx.shape == (2, 6, 6)


def test_bad_files_raise_amq_error(tmp_path) -> None:
    x, y = _grids()
    cases = {}
    cases["missing.npz"] = (None, "does not exist")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    cases["corrupt.npz"] = (None, "cannot read")
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    cases["corrupt.pt"] = (None, "corrupt")
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    cases["truncated.pt"] = (None, "cannot read")
    (tmp_path / "data.csv").write_text("1,2,3")
    cases["data.csv"] = (None, "unsupported")
    np.savez(tmp_path / "nokey.npz", x=x, solution=y)
    cases["nokey.npz"] = (None, r"no key 'y' \(keys: \['solution', 'x'\]\)")
    np.savez(tmp_path / "ndim.npz", x=x[0], y=y[0])
    cases["ndim.npz"] = (None, "expected \\(S, H, W\\)")
    np.savez(tmp_path / "mismatch.npz", x=x, y=y[:, :5])
    cases["mismatch.npz"] = (None, "must match")
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=y)
    cases["nan.npz"] = (None, "NaN or infinite")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), y=y)
    cases["objects.npz"] = (None, "cannot read")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    cases["list.pt"] = (None, "not a dict")
    np.savez(tmp_path / "few.npz", x=x, y=y)
    cases["few.npz"] = (10, "holds 4 samples but 10")
    np.savez(tmp_path / "tiny.npz", x=x[:, :3, :3], y=y[:, :3, :3])
    cases["tiny.npz"] = (None, "at least 4x4")
    for name, (n_samples, message) in cases.items():
        with pytest.raises(AMQError, match=message) as info:
            load_grid_file(tmp_path / name, n_samples=n_samples)
        print(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_pickled_code_is_refused_not_run(tmp_path, fmt: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    content = {"x": _CreatesFile(str(marker)), "y": torch.zeros(2, 4, 4)}
    if fmt == "torch":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(AMQError, match="refused to load .*would unpickle io.open") as info:
        load_grid_file(path)
    print(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def _small(tmp_path, **kwargs) -> datasets_module.MeshDataset:
    args = {"resolution": 8, "n_train": 6, "n_test": 2, "cache_dir": tmp_path} | kwargs
    return load_mesh_dataset(**args)


def test_darcy_dataset_splits_meta_and_cache_hit(tmp_path, monkeypatch) -> None:
    ds = _small(tmp_path, cluster_size=10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 1, 2)
    assert ds.meta["counts"] == {"train": 5, "val": 1, "test": 2}
    assert ds.meta["source"] == "darcy" and ds.meta["grid_shape"] == [8, 8] and ds.meta["cluster_size"] == 10
    assert all(isinstance(v, (str, int, float, list, dict, type(None))) for v in ds.meta.values())
    xs = torch.cat([m.x for m in ds.train])
    assert abs(float(xs.mean())) < 1e-5  # normalised with train statistics
    for m in ds.train + ds.val + ds.test:
        assert m.num_nodes == 64 and m.cluster_index.shape == (2, 64) and m.num_clusters == 7

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached dataset")

    monkeypatch.setattr(datasets_module, "_build", fail)
    again = _small(tmp_path, cluster_size=10)
    assert again.meta == ds.meta and again.normalizer == ds.normalizer
    for a, b in zip(ds.train + ds.val + ds.test, again.train + again.val + again.test, strict=True):
        assert sorted(a.keys()) == sorted(b.keys())  # PyG returns keys from a set: order is arbitrary
        for key, value in a:  # PyG Data iterates over (key, value) pairs
            assert torch.equal(value, b[key])
    with pytest.raises(AssertionError, match="rebuilt"):
        _small(tmp_path, cluster_size=12)  # other arguments: another cache entry
    cached = list(tmp_path.glob("meshes-*.pt"))
    assert len(cached) == 1
    torch.load(cached[0], weights_only=True)


def test_irregular_dataset_from_user_file(tmp_path) -> None:
    x, y = _grids(s=5, r=9)
    np.savez(tmp_path / "user.npz", x=x, y=y)
    ds = load_mesh_dataset(
        str(tmp_path / "user.npz"),
        n_train=3,
        n_test=2,
        mesh="irregular",
        keep_fraction=0.5,
        cluster_size=8,
        cache_dir=tmp_path,
    )
    assert ds.meta["source"] == str((tmp_path / "user.npz").resolve()) and ds.meta["grid_shape"] == [9, 9]
    n_nodes = 32 + round(0.5 * 49)
    assert all(m.num_nodes == n_nodes for m in ds.train + ds.val + ds.test)
    assert not torch.equal(ds.train[0].grid_id, ds.train[1].grid_id)  # one mesh per sample
    # the test split is the samples after the n_train ones, in file order
    raw = ds.normalizer.invert(ds.test[1].y, "y")[:, 0]
    torch.testing.assert_close(raw, torch.from_numpy(y[4].reshape(-1))[ds.test[1].grid_id])


def test_batching_keeps_cluster_index_consistent(tmp_path) -> None:
    ds = _small(tmp_path, mesh="irregular", cluster_size=9, n_train=8)
    meshes = ds.train + ds.val
    batch = next(iter(DataLoader(meshes, batch_size=4, shuffle=False)))
    assert batch.num_graphs == 4
    node_offset, cluster_offset = 0, 0
    for g in range(4):
        ci = meshes[g].cluster_index
        part = batch.cluster_index[:, batch.batch[batch.cluster_index[0]] == g]
        assert torch.equal(part, ci + torch.tensor([[node_offset], [cluster_offset]]))
        assert torch.equal(batch.grid_id[batch.batch == g], meshes[g].grid_id)  # not offset
        node_offset += meshes[g].num_nodes
        cluster_offset += meshes[g].num_clusters
    assert batch.num_clusters == cluster_offset
    # every cluster of the batch lies inside one graph
    owner = batch.batch[batch.cluster_index[0]]
    first = torch.zeros(cluster_offset, dtype=torch.long).scatter_(0, batch.cluster_index[1], owner)
    assert torch.equal(first[batch.cluster_index[1]], owner)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "navier-stokes"}, "unknown data source"),
        ({"source": "/no/such/file.npz"}, "unknown data source"),
        ({"resolution": 3}, "resolution"),
        ({"n_train": 1}, "n_train"),
        ({"n_train": 4, "n_val": 4}, "no training samples"),
        ({"n_test": -1}, "n_test"),
        ({"mesh": "hex"}, "mesh kind"),
        ({"mesh": "irregular", "keep_fraction": 1.5}, "keep_fraction"),
        ({"cluster_size": 0}, "cluster_size"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_dataset_arguments(tmp_path, kwargs, message) -> None:
    with pytest.raises(AMQError, match=message):
        _small(tmp_path, **kwargs)


def test_user_file_with_too_few_samples(tmp_path) -> None:
    x, y = _grids(s=4)
    np.savez(tmp_path / "user.npz", x=x, y=y)
    with pytest.raises(AMQError, match="holds 4 samples but 8"):
        load_mesh_dataset(str(tmp_path / "user.npz"), n_train=6, n_test=2, cache_dir=tmp_path)


def test_meshdata_round_trip_type(tmp_path) -> None:
    ds = _small(tmp_path)
    assert isinstance(ds.train[0], MeshData)
    assert "cluster_index" not in ds.train[0]
