"""Analyses of nucleus embeddings: clustering (more to come: probes, 2-D maps)."""

from .clusters import CLUSTERERS, cluster_kmeans, cluster_kmeans_stream

__all__ = ["CLUSTERERS", "cluster_kmeans", "cluster_kmeans_stream"]
