"""Graphs as data: node features ``X [B, N, F]`` and symmetric adjacency ``A [B, N, N]``.

* :mod:`reverie.graphs.data` -- trees, grids, stochastic-block (community) and Erdos-Renyi
  graphs, every labelled graph on a few nodes.
* :mod:`reverie.graphs.metrics` -- degree / clustering / spectrum histograms and their
  Gaussian-TV MMD (GDSS's evaluation).
* :mod:`reverie.graphs.gdss` -- GDSS's joint SDE system (symmetrised adjacency noise), an
  exact enumerable graph law's denoiser, the predictor-corrector reverse solver.
* :mod:`reverie.graphs.net` -- a tiny permutation-equivariant score network and graph
  embeddings from its intermediate features (diffusion-based representation learning).

See docs/graphs.md.
"""

from reverie.graphs.data import (
    FAMILIES,
    all_graphs,
    check_adjacency,
    erdos_renyi,
    family,
    from_triu,
    grid,
    sbm,
    tree,
    triu,
)
from reverie.graphs.gdss import GDSS, GraphLaw, degree_features, quantize, sample_gdss, sym_noise
from reverie.graphs.metrics import (
    STATS,
    clustering_hist,
    degree_hist,
    graph_mmd,
    mmd,
    spectrum_hist,
)

__all__ = [
    "FAMILIES", "GDSS", "STATS", "GraphLaw", "all_graphs", "check_adjacency", "clustering_hist",
    "degree_features", "degree_hist", "erdos_renyi", "family", "from_triu", "graph_mmd", "grid",
    "mmd", "quantize", "sample_gdss", "sbm", "spectrum_hist", "sym_noise", "tree", "triu",
]
