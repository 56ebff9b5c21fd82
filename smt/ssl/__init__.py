"""Deep self-supervised baselines for comparison with SMT (optional extra ``[ssl]``).

Laid out like solo-learn's ``solo/methods``: one shared training base
(:mod:`smt.ssl.base`: loop, LARS / AdamW, warmup + cosine, checkpoint and
resume, kNN evaluation, progress bars) and one short file per method:

* :mod:`smt.ssl.simclr` -- SimCLR (NT-Xent),
* :mod:`smt.ssl.vicreg` -- VICReg,
* :mod:`smt.ssl.msn` -- MSN and PMSN (Assran et al., ICLR 2023),
* :mod:`smt.ssl.carp` -- CARP (Silva & Ramírez Rivera, NeurIPS 2023),
* :mod:`smt.ssl.manifoldclr` -- ManifoldCLR (Fallah et al., TMLR 2024) and
  its same-harness SimCLR (:class:`~smt.ssl.simclr.SimCLRAdamW`),
* :mod:`smt.ssl.hssl` -- Homomorphic SSL (Keller et al., TMLR 2023) on a C4
  group-equivariant ResNet (:mod:`smt.ssl.equivariant`), its
  augmentation-based counterpart and the unstructured control,

with CIFAR backbones in :mod:`smt.ssl.backbones`, batched two-view
augmentations in :mod:`smt.ssl.augment` and the mini-batch class sampler in
:mod:`smt.ssl.sampler`.  Everything is plain torch.  The core ``smt``
package never imports this one.  Run ``python -m smt.ssl.train --help``.
"""
from .backbones import ResNet18, ViT, vit_tiny
from .base import SSLMethod, TrainConfig, Trainer
from .carp import CARP
from .equivariant import P4ResNet18
from .hssl import HSSL
from .manifoldclr import ManifoldCLR
from .msn import MSN, PMSN
from .sampler import ClassBatchSampler, long_tailed_indices
from .simclr import SimCLR, SimCLRAdamW
from .vicreg import VICReg

METHODS = {"simclr": SimCLR, "vicreg": VICReg, "msn": MSN, "pmsn": PMSN, "carp": CARP,
           "simclr_adamw": SimCLRAdamW, "manifoldclr": ManifoldCLR, "hssl": HSSL, "assl": HSSL,
           "hssl_unstructured": HSSL}

__all__ = ["METHODS", "SimCLR", "SimCLRAdamW", "VICReg", "MSN", "PMSN", "CARP", "ManifoldCLR", "HSSL",
           "ResNet18", "P4ResNet18", "ViT",
           "vit_tiny", "SSLMethod", "TrainConfig", "Trainer", "ClassBatchSampler", "long_tailed_indices",
           "build_method"]


def build_method(name: str, width: int = 64, vit_dim: int = 192, vit_depth: int = 12, vit_heads: int = 3,
                 proj_hidden: int | None = None, n_prototypes: int = 1024, carp_k: int = 4096,
                 carp_block: int = 128, p4_width: int = 16, seed: int = 0, **kw) -> SSLMethod:
    """Build a method with its paper backbone, seeded for a reproducible initialisation.

    Parameters
    ----------
    name : str
        A key of :data:`METHODS`.
    width : int, default 64
        ResNet-18 width (SimCLR, VICReg, CARP, ManifoldCLR).
    vit_dim, vit_depth, vit_heads : int, default 192, 12, 3
        ViT size (MSN, PMSN); the default is ViT-Tiny.
    proj_hidden : int, optional
        Projector hidden width; default the paper's.
    n_prototypes : int, default 1024
        MSN / PMSN only.
    carp_k, carp_block : int, default 4096, 128
        CARP's ``K`` and ``N_B``.
    p4_width : int, default 16
        Channels per fibre of the C4-equivariant ResNet-18 (H-SSL, A-SSL, the
        unstructured control).
    seed : int, default 0
    **kw
        Passed to the method.
    """
    import torch
    torch.manual_seed(seed)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    if proj_hidden is not None:
        kw["proj_hidden"] = proj_hidden
    if name in ("msn", "pmsn"):
        backbone = ViT(dim=vit_dim, depth=vit_depth, heads=vit_heads, patch_size=4, image_size=32)
        return METHODS[name](backbone, n_prototypes=n_prototypes, **kw)
    if name == "carp":
        return CARP(ResNet18(width), n_prototypes=carp_k, block_size=carp_block, **kw)
    if name in ("hssl", "assl", "hssl_unstructured"):
        backbone = P4ResNet18(p4_width, tied=name != "hssl_unstructured")
        return HSSL(backbone, mode="assl" if name == "assl" else "hssl", **kw)
    return METHODS[name](ResNet18(width), **kw)
