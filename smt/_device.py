"""Device selection shared by every stage."""
import os
import sys
import warnings

import sklearn
import torch

# Frames in these packages are skipped when a warning is attributed to the caller's line.
_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__package__], sklearn))


def resolve_device(device="auto"):
    """Return a torch.device: "auto" means CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device):
    """Whether ``device`` multiplies bfloat16 matrices in hardware.

    CUDA: bf16 tensor cores (Ampere and later). CPU: AMX tiles or AVX512-BF16. Without them PyTorch
    emulates the bfloat16 GEMM: on an AVX2 CPU it ran 100x slower than float32 (0.4 against 40
    GFLOP/s for the encode's 2048 x 108 x 8192 product, one thread; ``benchmarks/RESULTS.md``).
    Other backends are not probed: False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Private but stable probes of the CPU's ISA (torch.cpu, since 2.3); absent means unknown.
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def user_stacklevel():
    """The ``stacklevel`` that makes ``warnings.warn`` name the first line outside smt and scikit-learn.

    The depth from a public method to the warning differs between ``fit``, ``fit_transform``,
    ``partial_fit``, a Pipeline and scikit-learn's output wrappers, so it is counted, not fixed.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_emulated_bf16(precision, device, owner):
    """Warn when ``precision="bf16"`` will run on a device that emulates bfloat16 GEMMs."""
    # Only CPU and CUDA are probed; another backend's bf16 support is not known here.
    if precision == "bf16" and torch.device(device).type in ("cpu", "cuda") and not native_bf16(device):
        warnings.warn(f"{owner}(precision='bf16') on {torch.device(device)}, which has no bfloat16 matrix units: "
                      "PyTorch emulates the bf16 GEMM there, many times slower than float32 (100x on an AVX2 "
                      "CPU); use precision='float32'", UserWarning, stacklevel=user_stacklevel())
