"""Reading checkpoints safely: ``weights_only=True`` always, one clear error otherwise.

Every path that reads a checkpoint — the command line, ``BottleneckModel.load_from_checkpoint``,
the report, the editing command — goes through :func:`load_checkpoint_file`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint file loaded with ``weights_only=True``, or one clear error.

    Raises:
        FileNotFoundError: no file at ``path``.
        pickle.UnpicklingError: the file holds objects other than tensors and plain data.
        CheckpointError: the file is truncated, corrupt, or not a Lightning checkpoint.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        with warnings.catch_warnings():
            # torch's note on a foreign pickle protocol precedes its own, clearer refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if is_code_refusal(err):
            raise  # code in a pickle: refused by the command's error boundary with its own message
        raise CheckpointError(
            f"checkpoint {p} is corrupt or not a PyTorch checkpoint ({unpickler_reason(err)})"
        ) from err
    except Exception as err:  # noqa: BLE001 - zip, EOF, OS errors: all mean "unreadable"
        raise CheckpointError(
            f"checkpoint {p} is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(err).__name__}: {first_line(err)})"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {p} is not a Lightning checkpoint (it has no state_dict)")
    return ckpt


def unpickler_reason(err: BaseException) -> str:
    """The unpickler's own reason, without PyTorch's advice to retry with weights_only=False."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    after = text.split("WeightsUnpickler error:", 1)
    lines = [ln.strip() for ln in (after[1] if len(after) == 2 else text).splitlines() if ln.strip()]
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    reason = useful[0] if useful else type(err).__name__
    return reason.split(" Please use")[0]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, or made for another model or data)."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_code_refusal(err: BaseException) -> bool:
    """True for the unpickler's refusal of a global (a pickle that would run code)."""
    return isinstance(err, pickle.UnpicklingError) and ("Unsupported global" in str(err) or "GLOBAL" in str(err))
