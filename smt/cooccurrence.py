"""Window co-occurrence of words: the context statistics of one-hot codes (docs/algorithm.md §8.3-8.4).

For text, the dictionary is the vocabulary and every token's code is one-hot, so the statistics of
:class:`smt.statistics.ContextStatistics` collapse to word counts ``f`` (G = diag(f)) and a sparse
symmetric co-occurrence matrix ``C``. They are sums over lines, so they stream: memory grows with
the number of distinct words and distinct co-occurring pairs, never with the corpus length.
"""
import numpy as np
import scipy.sparse

WEIGHTINGS = ("uniform", "inverse_distance")

# Tokens buffered before their pairs are counted: bounds the per-chunk temporaries (~100 MB).
_CHUNK_TOKENS = 1 << 20
# Entries per block of the pair table (48 MiB): an insertion copies one block at a time.
_BLOCK = 1 << 22


class WindowCooccurrence:
    """Streaming counts of words and of word pairs at most ``window`` positions apart in a line.

    Every distinct word gets an id on first sight; the vocabulary cut (the V most frequent words) is
    applied only at the end, by :meth:`restrict`, because the final counts are not known before.
    Pairs are kept as a sorted table of int64 keys ``lo << 32 | hi`` (``lo <= hi``) with float32
    weights (12 bytes per distinct pair), in blocks; chunks of new pairs are merged into it once they
    reach an eighth of its size, so each merge costs O(table) and memory stays near the table's size.

    Parameters
    ----------
    window : int, default 5
        w: tokens at most w positions apart in the same line are neighbours (docs/algorithm.md §8.3).
    weighting : {"uniform", "inverse_distance"}, default "uniform"
        Weight of a pair at distance o: 1, or 1/o.

    Attributes
    ----------
    index_ : dict of str to int
        Word -> id, in order of first sight.
    n_tokens_ : int
        Tokens read.
    n_lines_ : int
        Token lists read.
    """

    def __init__(self, window=5, weighting="uniform"):
        self.window = window
        self.weighting = weighting
        self.index_ = {}
        self.n_tokens_ = 0
        self.n_lines_ = 0
        self._counts = np.zeros(0, dtype=np.int64)
        self._ids, self._lines = [], []
        self._n_buffered = 0
        self._table = _SortedTable()
        self._pending = []

    def add(self, tokens):
        """Add one line (a sequence of tokens; windows never cross lines)."""
        index = self.index_
        ids = [index.setdefault(t, len(index)) for t in tokens]
        self.n_lines_ += 1
        if not ids:
            return
        self._ids.append(np.asarray(ids, dtype=np.int64))
        self._lines.append(np.full(len(ids), self.n_lines_, dtype=np.int64))
        self._n_buffered += len(ids)
        self.n_tokens_ += len(ids)
        if self._n_buffered >= _CHUNK_TOKENS:
            self._flush()

    def counts(self):
        """Occurrences of every word id, shape (len(index_),)."""
        self._flush()
        return self._counts

    def restrict(self, words):
        """Counts and co-occurrences of ``words`` only, as the upper triangle of C; consumes the table.

        Parameters
        ----------
        words : sequence of str
            The kept vocabulary, each in :attr:`index_`.

        Returns
        -------
        words : list of str
            The same words in order of first sight: the order of the rows below. In this order the
            sorted pair table maps straight onto CSR rows, with no sort and no second copy of C.
        f : ndarray of shape (V,), int64
            Occurrences of each word.
        upper : scipy.sparse.csr_array of shape (V, V), float64
            Upper triangle (with the diagonal) U of the symmetric co-occurrence weights
            ``C = U + U.T``: ``C[i, j]`` sums over ordered position pairs (p, q),
            ``0 < |p - q| <= w`` in one line, with word i at p and word j at q. Pairs with a word
            outside ``words`` are dropped; such words still took window positions.

        Notes
        -----
        The pair table is released block by block while U is built, so memory peaks near the
        larger of the two rather than their sum; the statistics cannot be restricted twice.
        """
        self._flush()
        self._merge()
        old = np.sort(np.fromiter((self.index_[w] for w in words), dtype=np.int64, count=len(words)))
        names = list(self.index_)
        new = np.full(len(self.index_), -1, dtype=np.int64)
        new[old] = np.arange(len(old))

        def remap(keys):
            lo, hi = new[keys >> 32], new[keys & 0xFFFFFFFF]
            keep = (lo >= 0) & (hi >= 0)
            return lo[keep], hi[keep], keep

        nnz = sum(len(remap(keys)[0]) for keys, _ in self._table.blocks)
        index_dtype = np.int32 if nnz < 2**31 else np.int64  # one dtype, or scipy copies to unify them
        indices = np.empty(nnz, dtype=index_dtype)
        data = np.empty(nnz, dtype=np.float64)
        row_counts = np.zeros(len(old), dtype=np.int64)
        at = 0
        while self._table.blocks:
            keys, vals = self._table.blocks.pop(0)
            lo, hi, keep = remap(keys)
            indices[at:at + len(hi)] = hi
            data[at:at + len(hi)] = vals[keep]
            row_counts += np.bincount(lo, minlength=len(old))
            at += len(hi)
            del keys, vals, lo, hi, keep
        indptr = np.concatenate([[0], np.cumsum(row_counts)]).astype(index_dtype)
        upper = scipy.sparse.csr_array((data, indices, indptr), shape=(len(old), len(old)))
        return [names[i] for i in old], self._counts[old], upper

    def _flush(self):
        if not self._ids:
            return
        ids, lines = np.concatenate(self._ids), np.concatenate(self._lines)
        self._ids, self._lines, self._n_buffered = [], [], 0
        n_ids = len(self.index_)
        if len(self._counts) < n_ids:
            self._counts = np.concatenate([self._counts, np.zeros(n_ids - len(self._counts), np.int64)])
        self._counts += np.bincount(ids, minlength=n_ids)
        keys, vals = [], []
        # No pair is further apart than the longest buffered line: a wider window adds nothing.
        reach = min(self.window, int(np.bincount(lines - lines.min()).max()) - 1)
        for o in range(1, reach + 1):
            same = lines[o:] == lines[:-o]
            a, b = ids[:-o][same], ids[o:][same]
            keys.append(np.minimum(a, b) << 32 | np.maximum(a, b))
            vals.append(np.full(len(a), 1.0 if self.weighting == "uniform" else 1.0 / o))
        self._pending.append(_sum_duplicates(np.concatenate(keys), np.concatenate(vals)))
        if sum(len(k) for k, _ in self._pending) > max(len(self._table) // 8, _CHUNK_TOKENS):
            self._merge()

    def _merge(self):
        if not self._pending:
            return
        keys, vals = self._pending[0] if len(self._pending) == 1 else _sum_duplicates(
            np.concatenate([k for k, _ in self._pending]), np.concatenate([v for _, v in self._pending]))
        self._pending = []
        self._table.add(keys, vals)


def _sum_duplicates(keys, vals):
    keys, inverse = np.unique(keys, return_inverse=True)
    return keys, np.bincount(inverse, weights=vals)


class _SortedTable:
    """Sorted unique int64 keys with float32 weights, held in blocks of at most ``2 * block`` entries.

    New keys are inserted block by block, so an insertion copies one block at a time: memory peaks
    at the table plus one block, not twice the table. float32 holds integer counts exactly up to
    2**24 and sums of chunk counts to 6e-8 relative error beyond.
    """

    def __init__(self):
        self.block = _BLOCK
        self.blocks = []

    def __len__(self):
        return sum(len(k) for k, _ in self.blocks)

    def add(self, keys, vals):
        """Add weights ``vals`` at sorted unique ``keys``."""
        vals = vals.astype(np.float32)
        if not self.blocks:
            self.blocks = [(keys[i:i + self.block], vals[i:i + self.block]) for i in range(0, len(keys), self.block)]
            return
        firsts = np.array([k[0] for k, _ in self.blocks])
        # Keys below the first block go to it; bounds[b]:bounds[b + 1] are block b's new keys.
        bounds = np.searchsorted(keys, firsts[1:]).tolist()
        bounds = [0] + bounds + [len(keys)]
        out = []
        for (table_keys, table_vals), lo, hi in zip(self.blocks, bounds[:-1], bounds[1:]):
            if hi > lo:
                table_keys, table_vals = _insert(table_keys, table_vals, keys[lo:hi], vals[lo:hi])
            if len(table_keys) > 2 * self.block:
                half = len(table_keys) // 2
                out += [(table_keys[:half].copy(), table_vals[:half].copy()), (table_keys[half:], table_vals[half:])]
            else:
                out.append((table_keys, table_vals))
        self.blocks = out


def _insert(table_keys, table_vals, keys, vals):
    at = np.searchsorted(table_keys, keys)
    found = at < len(table_keys)
    found[found] = table_keys[at[found]] == keys[found]
    table_vals[at[found]] += vals[found]  # keys are unique: no repeated index
    new = ~found
    return np.insert(table_keys, at[new], keys[new]), np.insert(table_vals, at[new], vals[new])
