"""Build, save, load and query a faiss index of normalised embeddings (inner product = cosine).

Small corpora get an exact index (`flat`); past `AUTO_THRESHOLD` vectors, `kind="auto"` picks an
inverted-file index (`ivf`) whose probes are set for recall@10 ≥ 0.95 on clustered data. `hnsw`
is there on request: faster queries than IVF, but a much slower build on few cores.

    index = VectorIndex.build(doc_embeddings)            # [N, D] float32, L2-normalised
    scores, ids = index.search(query_embeddings, k=10)   # [Q, k] each; ids are rows of doc_embeddings
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from contrastkit.errors import ConfigError, DataError
from contrastkit.files import default_file_mode, failed_writes_named
from contrastkit.vectors import non_finite_rows

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
# Below this many vectors exact search costs a few milliseconds a query on 2 cores (about 2.4 ms at
# 200,000 × 384, in batches), and an approximate index would cost its build (6 s at 200,000) and
# recall for little: IVF answers about 1.65x as many queries a second as flat at 1M (equal batches).
AUTO_THRESHOLD = 200_000


def _as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, dim], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, the index has {dim}")
    bad = non_finite_rows(x)
    if len(bad):  # faiss drops them without a word (flat, HNSW) or stops in k-means with C++ (IVF)
        rows = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{len(bad):,} of the {name} hold NaN or infinity (rows {rows}): a model or data problem "
                        f"to mend before indexing")
    return x


def default_nlist(n: int) -> int:
    """IVF lists for n vectors: about 2·√n (fewer lists train faster), but never so many that a list trains on < 39 points."""
    return max(1, min(int(2 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """IVF lists to visit per query: 1/8 of them (at least 8), enough for recall@10 ≥ 0.95 here."""
    return min(nlist, max(8, nlist // 8))


class VectorIndex:
    """A faiss index over row-numbered vectors, searched by inner product.

    Build it with `VectorIndex.build`; `kind` is "flat", "ivf" or "hnsw" once built.
    """

    def __init__(self, index: faiss.Index, kind: str) -> None:
        self.index = index
        self.kind = kind

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, embeddings: np.ndarray, kind: str = "auto", *, threshold: int = AUTO_THRESHOLD,
              nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
              ef_construction: int = 80, ef_search: int = 128, seed: int = 0) -> "VectorIndex":
        """Index `embeddings` [N, D] (float32, normalised by the caller for cosine).

        kind: "auto" (flat below `threshold` vectors, else ivf), "flat" (exact), "ivf" (nlist lists,
        trained by k-means on at most 40·nlist vectors drawn with `seed`; nprobe visited per query),
        "hnsw" (hnsw_m links per node, ef_construction / ef_search beam widths).
        """
        if kind not in INDEX_KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
        x = _as_matrix(embeddings, "embeddings")
        n, dim = x.shape
        if n == 0:
            raise ValueError("cannot build an index over zero vectors")
        if kind == "auto":
            kind = "flat" if n < threshold else "ivf"
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or default_nlist(n)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means quality barely moves IVF recall at this many probes; 40 points per list and
            # 10 iterations keep training a few seconds on 2 cores instead of a minute.
            index.cp.seed, index.cp.niter = seed, 10
            sample = x
            if n > 40 * nlist:
                sample = x[np.sort(np.random.default_rng(seed).choice(n, 40 * nlist, replace=False))]
            index.train(sample)
            index.nprobe = min(nprobe or default_nprobe(nlist), nlist)
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        index.add(x)
        return cls(index, kind)

    # ------------------------------------------------------------------ querying
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, *, batch_size: int = 4096,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for each query: (scores [Q, k] float32, ids [Q, k] int64), best first.

        k is capped at the index size. An approximate index may find fewer than k rows for a query;
        the missing places hold id -1 and score -inf.
        """
        q = _as_matrix(queries, "queries", self.dim)
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        k = min(k, len(self))
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        # HNSW's beam must be at least k wide, or it finds fewer (k 2,000 with efSearch 128: recall 0.53)
        params = (faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, k))
                  if self.kind == "hnsw" and k > self.index.hnsw.efSearch else None)
        with tqdm(total=len(q), desc="search", unit="query", disable=not show_progress) as bar:
            for start in range(0, len(q), batch_size):
                stop = start + batch_size
                scores[start:stop], ids[start:stop] = self.index.search(q[start:stop], k, params=params)
                bar.update(len(q[start:stop]))
        scores[ids < 0] = -np.inf
        return scores, ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to one file (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            with failed_writes_named(path):  # faiss reports a full disk as RuntimeError
                faiss.write_index(self.index, tmp)
            os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would hide the index from other users
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VectorIndex":
        """Read an index written by `save`; its kind, probes and ef_search come back with it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no index file at {path}")
        index = faiss.read_index(str(path))
        if isinstance(index, faiss.IndexIVF):
            kind = "ivf"
        elif isinstance(index, faiss.IndexHNSW):
            kind = "hnsw"
        elif isinstance(index, faiss.IndexFlat):
            kind = "flat"
        else:
            raise ValueError(f"{path} holds a {type(index).__name__}, not an index written by VectorIndex")
        return cls(index, kind)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, size={len(self)}, dim={self.dim})"
