"""Device selection shared by every stage."""
import torch


def resolve_device(device="auto"):
    """Return a torch.device: "auto" means CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
