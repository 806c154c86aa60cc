"""Mesh data: generators, loaders of user grids, mesh graphs and clusters. Knows nothing of quantization."""

from amq_export.data.clusters import size_capped_kmeans
from amq_export.data.darcy import darcy_coefficients, darcy_path, generate_darcy, solve_darcy, write_darcy_npz
from amq_export.data.datasets import MeshDataset, load_mesh_dataset
from amq_export.data.grid_loader import load_grid_file
from amq_export.data.mesh import mesh_from_grid
from amq_export.data.mesh_data import NODE_BOUNDARY, NODE_INTERIOR, NUM_NODE_TYPES, MeshData
from amq_export.data.normalizer import Normalizer

__all__ = [
    "NODE_BOUNDARY",
    "NODE_INTERIOR",
    "NUM_NODE_TYPES",
    "MeshData",
    "MeshDataset",
    "Normalizer",
    "darcy_coefficients",
    "darcy_path",
    "generate_darcy",
    "load_grid_file",
    "load_mesh_dataset",
    "mesh_from_grid",
    "size_capped_kmeans",
    "solve_darcy",
    "write_darcy_npz",
]
