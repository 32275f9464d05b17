"""allpairs: read the artifacts the pipeline writes (the top-k cosine neighbours of every row).

    import allpairs

    art = allpairs.open("s3://bucket/runs/<execution id>/artifact")  # a path, s3://, or a registry entry
    art.neighbors("sku-001")                  # pandas DataFrame: id, neighbor_id, rank, score
    art.neighbors(["sku-001", "sku-002"], k=3)
    art.edges().to_table(columns=["id", "neighbor_id"])   # the whole edge list: a pyarrow Dataset
    art.manifest.rows, art.manifest.k, art.manifest.counts.pairs   # manifest.json, typed

The format and its index space: steps/formats/artifact.py (the README's artifact section says the same).
"""
from __future__ import annotations

from steps.contract import ARTIFACT_FORMAT
from steps.formats.artifact import Artifact, ArtifactError, Counts, FileEntry, InvalidRequest, Manifest, NotFound

from .locations import open  # noqa: A004 - allpairs.open, as gzip.open and tarfile.open

__all__ = ["ARTIFACT_FORMAT", "Artifact", "ArtifactError", "Counts", "FileEntry", "InvalidRequest", "Manifest",
           "NotFound", "open"]
