"""Analyses of nucleus embeddings.

- :mod:`.clusters`: k-means (in memory and streaming over a store), the silhouette
  hint for k; :mod:`.graph_clusters`: Leiden on a nearest-neighbour graph;
- :mod:`.probe`: the linear probe that types nuclei from brushed labels;
  :mod:`.suggest`: which nuclei to label next;
- :mod:`.morphology_map`: the 2-D map and its thumbnail grid;
  :mod:`.neighbours`: nuclei that look alike; :mod:`.brush_hits`: nuclei under a
  brush stroke; :mod:`.openmp_order`: torch loaded before numba's threads.

Submodules import their heavier libraries (umap-learn, igraph) when used.
"""

from .clusters import CLUSTERERS, cluster_kmeans, cluster_kmeans_stream

__all__ = ["CLUSTERERS", "cluster_kmeans", "cluster_kmeans_stream"]
