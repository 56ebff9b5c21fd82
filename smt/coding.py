"""Sparse codes of whitened unit patches against a dictionary of unit atoms (docs/algorithm.md §4).

A code is stored as padded lists: ``indices`` (n, m) of active atoms with -1 for "none", and
``values`` (n, m) of their coefficients. A dense (n, K) code is never built.
"""
import torch

try:  # one compiled compare-and-compact pass; torch's two passes otherwise (the same codes)
    from smt._threshold import threshold_code
except ImportError:  # numba is optional: pip install "sparse-manifold-transform[fast]"
    threshold_code = None

CODINGS = ("one_sparse", "top_k", "threshold")
CODE_NORMS = (None, "l1", "l2")
PRECISIONS = ("float32", "bf16")
CODE_VALUES = ("binary", "similarity", "excess")
EMPTY_CODES = ("zero", "argmax")

# Bound on the (rows x atoms) similarity block held at once: 2**24 floats = 64 MiB on CUDA. On CPU
# 2**20 floats (4 MiB) keeps the block in cache between the GEMM that writes it and the threshold
# that reads it: twice the encode rate of 64 MiB blocks (benchmarks/RESULTS.md, "Speed").
_MAX_BLOCK = 1 << 24
_MAX_BLOCK_CPU = 1 << 20


def threshold_lists(x, dictionary, threshold, empty_code="zero", precision="float32"):
    """Binary threshold codes as flat lists, or None where the compiled coder does not apply.

    The codes of ``sparse_code(x, dictionary, "threshold", threshold, empty_code=empty_code,
    precision=precision)`` without their padded arrays: the code statistics and the code store
    take the lists as they are (CSR rows), and at K 8192 the padding is most of the memory
    traffic of the statistics pass (the widest code of a batch is about 3.5x the mean).

    Parameters
    ----------
    x : torch.Tensor of shape (n, D)
        Whitened, unit-norm patches, on the CPU.
    dictionary : torch.Tensor of shape (K, D)
    threshold : float
    empty_code : {"zero", "argmax"}
    precision : {"float32", "bf16"}

    Returns
    -------
    atoms : ndarray of shape (nnz,), int32
        Each patch's active atoms in ascending order, patch after patch.
    counts : ndarray of shape (n,), int64
        Active atoms per patch.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if empty_code not in EMPTY_CODES:
        raise ValueError(f"empty_code must be one of {EMPTY_CODES}, got {empty_code!r}")
    if not _compiled_threshold_applies(x, threshold, precision):
        return None
    blocks, _ = _precision_blocks(x, dictionary, precision)
    return threshold_code(blocks, x.shape[0], threshold, empty_code == "argmax", padded=False)


def _compiled_threshold_applies(x, threshold, precision):
    """Whether the compiled threshold pass codes ``x``: numba installed, CPU, and for bfloat16
    similarities a positive threshold (their compare reads the bits as integers)."""
    return threshold_code is not None and x.device.type == "cpu" and (precision != "bf16" or threshold > 0)


def _precision_blocks(x, dictionary, precision):
    """The similarity blocks ``x @ dictionary.T`` at ``precision`` (see ``_similarity_blocks``), and
    the rows per block."""
    rows = block_rows(dictionary.shape[0], x.device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.promote_types(x.dtype, dictionary.dtype)
    return _similarity_blocks(x.to(dtype), dictionary.to(dtype), rows), rows


def sparse_code(x, dictionary, coding="threshold", threshold=0.3, n_nonzero=1, max_active=None,
                empty_code="zero", code_norm=None, empty=None, precision="float32", code_values="binary"):
    """Sparse codes from cosine similarities ``S = x @ dictionary.T``.

    Parameters
    ----------
    x : torch.Tensor of shape (n, D)
        Whitened, unit-norm patches (zero rows for empty patches).
    dictionary : torch.Tensor of shape (K, D)
        Unit-norm atoms.
    coding : {"one_sparse", "top_k", "threshold"}
        ``one_sparse``: the best atom (vector quantisation; ties go to the lowest index).
        ``top_k``: the ``n_nonzero`` best atoms. ``threshold``: every atom with ``S > threshold``
        (the paper's general sparse coding f_gq).
    threshold : float
    n_nonzero : int
        Number of atoms for ``top_k``.
    max_active : int or None
        For ``threshold``: keep only the best ``max_active`` atoms above the threshold.
    empty_code : {"zero", "argmax"}
        For ``threshold``: a patch with no atom above the threshold gets no code (``zero``) or its
        best atom (``argmax``).
    code_norm : {None, "l1", "l2"}
        Coefficients divided by the code's L1 or L2 norm (binary codes: 1/count or 1/sqrt(count)).
    empty : torch.Tensor of shape (n,), bool, optional
        Patches that get no code whatever their similarities (constant patches).
    precision : {"float32", "bf16"}
        Of the similarity GEMM. ``"bf16"`` multiplies bfloat16 patches and atoms (float32
        accumulation, bfloat16 similarities; 2-3x the float32 rate on CPUs with bf16 units) and
        compares the similarities with the threshold in float32: codes differ from float32's only
        for similarities within bfloat16's rounding (about 0.4 %) of the threshold or of each other.
    code_values : {"binary", "similarity", "excess"}
        Coefficient of an active atom: 1, its similarity ``S_k`` (float32, whatever the precision),
        or ``S_k - threshold`` (``threshold`` coding only), before ``code_norm``.

    Returns
    -------
    indices : torch.Tensor of shape (n, m), int64
        Active atoms in ascending order of index (``top_k``: of similarity), -1 pads.
    values : torch.Tensor of shape (n, m), float32
        Coefficients, 0 at pads.

    Notes
    -----
    On CPU with numba installed (the ``fast`` extra), ``threshold`` codes without ``max_active``
    come from one compiled compare-and-compact pass per similarity block instead of torch's
    compare, ``nonzero`` and scatter: the same codes at about 1.5x the rate.

    Examples
    --------
    >>> d = torch.eye(3)
    >>> idx, val = sparse_code(torch.tensor([[1.0, 0.0, 0.0]]), d, coding="one_sparse")
    >>> idx.tolist(), val.tolist()
    ([[0]], [[1.0]])
    """
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if code_values not in CODE_VALUES:
        raise ValueError(f"code_values must be one of {CODE_VALUES}, got {code_values!r}")
    if code_values == "excess" and coding != "threshold":
        raise ValueError(f"code_values='excess' needs coding='threshold', got coding={coding!r}")
    n = x.shape[0]
    x32, dictionary32 = x.float(), dictionary.float()
    if coding == "threshold" and empty_code not in EMPTY_CODES:
        raise ValueError(f"empty_code must be one of {EMPTY_CODES}, got {empty_code!r}")
    blocks, rows = _precision_blocks(x, dictionary, precision)
    compiled = (coding == "threshold" and max_active is None and _compiled_threshold_applies(x, threshold, precision))
    if compiled:
        indices, values = threshold_code(blocks, n, threshold, empty_code == "argmax")
    else:
        # bfloat16 similarities are compared in float32 (the threshold itself is not a bfloat16).
        parts = [_code_block(s.float() if s.dtype == torch.bfloat16 else s, coding, threshold, n_nonzero,
                             max_active, empty_code) for s in blocks]
        width = max([p.shape[1] for p in parts] + [1])
        indices = torch.full((n, width), -1, dtype=torch.int64, device=x.device)
        for i, p in zip(range(0, n, rows), parts):
            indices[i:i + p.shape[0], :p.shape[1]] = p
        values = None
    if empty is not None:
        indices[empty.reshape(-1)] = -1
        if values is not None:
            values[empty.reshape(-1)] = 0
    if code_values != "binary":
        values = _similarities_at(x32, dictionary32, indices)
        if code_values == "excess":
            values = torch.where(indices >= 0, values - threshold, values)
    elif values is None:
        values = (indices >= 0).to(torch.float32)
    if code_norm is not None:
        if code_norm not in CODE_NORMS:
            raise ValueError(f"code_norm must be one of {CODE_NORMS}, got {code_norm!r}")
        # For binary codes both norms are functions of the count: l1 = count, l2 = sqrt(count).
        if code_norm == "l1":
            norm = values.abs().sum(1, keepdim=True)
        else:
            norm = values.square().sum(1, keepdim=True).sqrt()
        values = values / torch.where(norm > 0, norm, torch.ones((), device=values.device))
    return indices, values


def _similarities_at(x, dictionary, indices, rows=4096):
    """``x_i . dictionary_j`` for each active ``j`` of ``indices`` (n, m), 0 at the -1 pads.

    Row blocks bound the gathered (rows, m, D) atoms; the work is m D per patch, next to the
    encode's K D.
    """
    values = torch.zeros(indices.shape, dtype=torch.float32, device=x.device)
    for i in range(0, len(indices), rows):
        idx = indices[i:i + rows]
        atoms = dictionary[idx.clamp(min=0)]                     # (rows, m, D)
        values[i:i + rows] = torch.einsum("nd,nmd->nm", x[i:i + rows], atoms) * (idx >= 0)
    return values


def block_rows(n_atoms, device):
    """Rows of patches coded at once: the (rows x atoms) similarity block stays within the bound."""
    return max(1, (_MAX_BLOCK if torch.device(device).type == "cuda" else _MAX_BLOCK_CPU) // n_atoms)


def _similarity_blocks(x, dictionary, rows):
    """``x @ dictionary.T``, ``rows`` rows at a time, each written into the same buffer.

    A fresh block per step is a fresh set of page faults. Each block is overwritten by the next:
    consume it before asking for another.
    """
    n = x.shape[0]
    block = torch.empty((min(rows, n), dictionary.shape[0]), dtype=x.dtype, device=x.device)
    for i in range(0, n, rows):
        yield torch.mm(x[i:i + rows], dictionary.T, out=block[:min(rows, n - i)])


def _code_block(s, coding, threshold, n_nonzero, max_active, empty_code):
    if coding == "one_sparse" or (coding == "top_k" and n_nonzero == 1):
        return s.argmax(dim=1, keepdim=True)
    if coding == "top_k":
        return s.topk(min(n_nonzero, s.shape[1]), dim=1).indices
    mask = s > threshold
    if max_active is not None:
        top = s.topk(min(max_active, s.shape[1]), dim=1)
        capped = torch.zeros_like(mask)
        capped.scatter_(1, top.indices, top.values > threshold)
        mask = capped
    if empty_code == "argmax":
        none = ~mask.any(dim=1)
        mask[none, s[none].argmax(dim=1)] = True
    r, c = mask.nonzero(as_tuple=True)
    # Counting from the few active entries: a row sum over the whole (n, K) mask costs more than
    # the GEMM on CPU (bool reductions are slow there).
    counts = torch.bincount(r, minlength=s.shape[0])
    width = int(counts.max()) if len(counts) else 0
    out = torch.full((s.shape[0], max(width, 1)), -1, dtype=torch.int64, device=s.device)
    starts = torch.cumsum(counts, 0) - counts
    out[r, torch.arange(len(r), device=s.device) - starts[r]] = c
    return out

