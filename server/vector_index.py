"""Stage 1 of two-stage `/retrieve`: inner-product search over a gallery's pre-filter embeddings (faiss).

Exact search (`faiss.IndexFlatIP`) up to `Settings.gallery_flat_max` images, an HNSW graph
(`faiss.IndexHNSWFlat`, ``METRIC_INNER_PRODUCT``) beyond it.  The embeddings are unit vectors, so
the inner product is the cosine similarity.

Row i of an index is the gallery's position i (server/gallery_store.py `StoredGallery`): deleted
images stay in it until the gallery is compacted, and appends add rows at the end.  A search says
which positions count (`search(..., size, removed)`): a request holding an older snapshot of the
gallery ignores rows appended after it, and deleted rows are never returned.  faiss indexes must not
be searched while rows are added: one lock per index orders the two.  faiss is imported on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

FLAT = "flat"
HNSW = "hnsw"
HNSW_EF_CONSTRUCTION = 80

_faiss = None
_faiss_lock = threading.Lock()


def faiss_module(threads: int = 1):
    """faiss, imported once (its OpenMP threads set to `threads`)."""
    global _faiss
    with _faiss_lock:
        if _faiss is None:
            import faiss

            faiss.omp_set_num_threads(max(1, threads))
            _faiss = faiss
    return _faiss


@dataclass(frozen=True)
class IndexParams:
    """How galleries are indexed (from `Settings`: gallery_flat_max, hnsw_m, hnsw_ef_search, threads)."""

    flat_max: int = 50_000
    hnsw_m: int = 32
    ef_search: int = 128
    threads: int = 1

    def kind_for(self, size: int) -> str:
        """The index a gallery of `size` positions gets: exact up to `flat_max`, HNSW beyond."""
        return FLAT if size <= self.flat_max else HNSW


class VectorIndex:
    """Inner-product search over rows added in position order (thread-safe)."""

    def __init__(self, dim: int, kind: str, params: IndexParams) -> None:
        faiss = faiss_module(params.threads)
        self.dim = dim
        self.kind = kind
        self.params = params
        if kind == FLAT:
            self._index = faiss.IndexFlatIP(dim)
        elif kind == HNSW:
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = params.ef_search
            self._index = index
        else:
            raise ValueError(f"index kind {kind!r}: {FLAT} or {HNSW}")
        self._lock = threading.Lock()

    @classmethod
    def build(cls, vectors: np.ndarray, params: IndexParams, kind: str | None = None) -> VectorIndex:
        """An index over `vectors` (N, D), of the kind `params` gives N unless `kind` is named."""
        index = cls(int(vectors.shape[1]), kind or params.kind_for(len(vectors)), params)
        index.add(vectors)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (the next positions)."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(rows):
            with self._lock:
                self._index.add(rows)

    def search(
        self, query: np.ndarray, k: int, size: int | None = None, removed: Collection[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the `k` best rows, best first: only positions below `size` (default:
        every row) that are not in `removed`.  Fewer than `k` when fewer rows count."""
        faiss = faiss_module()
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            total = int(self._index.ntotal)
            size = total if size is None else min(size, total)
            k = min(k, size - sum(1 for p in removed if p < size))
            if k <= 0:
                return np.zeros(0, np.float32), np.zeros(0, np.int64)
            # Keep the selectors referenced until the search returns (SWIG does not own them).
            selectors: list = []
            if size < total or removed:
                selectors.append(faiss.IDSelectorRange(0, size))
                if removed:
                    batch = faiss.IDSelectorBatch(np.asarray(sorted(removed), dtype=np.int64))
                    selectors += [batch, faiss.IDSelectorNot(batch)]
                    selectors.append(faiss.IDSelectorAnd(selectors[0], selectors[-1]))
            if self.kind == HNSW:
                params = faiss.SearchParametersHNSW()
                params.efSearch = max(self.params.ef_search, k)
            else:
                params = faiss.SearchParameters()
            if selectors:
                params.sel = selectors[-1]
            scores, ids = self._index.search(q, k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep].astype(np.float32), ids[0][keep].astype(np.int64)
