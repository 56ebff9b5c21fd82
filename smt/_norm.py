"""L2 normalisation with the package's one epsilon (patches, codes, pooled and output embeddings,
dictionary atoms, kNN inputs)."""
NORM_EPS = 1e-9


def l2_normalize(x, dim=-1):
    """``x / (||x|| + NORM_EPS)`` along ``dim`` (a torch tensor): unit vectors, and zero vectors stay zero."""
    return x / (x.norm(dim=dim, keepdim=True) + NORM_EPS)
