"""A trained model as a self-contained directory, and the model that scores rows from it.

``cafe-dist export`` writes::

    DIR/model.json        method, ratio, sizes, the method's settings, the dataset's meta, bytes
    DIR/weights.pt        dense weights (fp32) and the embedding tables, gathered from their shards:
                          fp32, or row-wise int8 with an fp16 scale and bias per row (``quantize``)
    DIR/method_state.pt   what the method needs to map an id to rows (CAFE's hot map, MCH's id maps)
    DIR/values.parquet    the raw values of the features kept uncompressed, one row each (full: its
                          vocabulary); absent when every feature is hashed
    DIR/files/            files the method's settings name (LMA's signatures)

No Ray, no DMP and no optimizer state: :class:`ServedModel` builds the same DLRM on one device with
plain TorchRec tables and scores raw rows exactly as training saw them: the model takes raw values,
hashes those of compressed features (an unseen value like any other) and maps those of
uncompressed ones through their list (an unlisted value reads row 0). Nothing in the directory
grows with the number of values a compressed method never stored.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cafe_dist.batching import one_id_per_feature
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.embeddings.registry import method_class
from cafe_dist.errors import BadInputError
from cafe_dist.model import DLRM
from cafe_dist.model_spec import ModelSpec

FORMAT = "cafe-dist-model/1"
MODEL_FILE, WEIGHTS_FILE, STATE_FILE, VALUES_FILE, FILES_DIR = (
    "model.json", "weights.pt", "method_state.pt", "values.parquet", "files")
TABLE_PREFIX = "embedding.ebc.embedding_bags."


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested dict/list (what a state really holds)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def quantize_rows(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Row-wise asymmetric int8, as fbgemm's quantised inference tables: per row an fp16 scale and
    bias, ``w ≈ q * scale + bias`` with q in 0..255."""
    lo, hi = w.min(dim=1, keepdim=True).values, w.max(dim=1, keepdim=True).values
    scale = ((hi - lo) / 255).clamp_min(1e-12).half()
    bias = lo.half()
    q = ((w - bias.float()) / scale.float()).round_().clamp_(0, 255).to(torch.uint8)
    return {"q": q, "scale": scale, "bias": bias}


def dequantize_rows(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return t["q"].float() * t["scale"].float() + t["bias"].float()


@dataclass
class ServedModel:
    """An exported model, ready to score. ``score`` takes dense features and raw categorical values."""

    model: DLRM
    meta: DatasetMeta
    info: dict[str, Any]

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ServedModel:
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # torchrec's is_fx_tracing notice
        d = Path(directory)
        if not (d / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{d}: no {MODEL_FILE}; not a model written by `cafe-dist export`")
        name = MODEL_FILE
        try:  # each file read names itself if it is damaged (truncated copy, hand edit, disk error)
            info = json.loads((d / MODEL_FILE).read_text())
            if info.get("format") != FORMAT:
                raise BadInputError(f"{d}: model format {info.get('format')!r}, this cafe-dist reads {FORMAT}")
            meta = DatasetMeta(**info["meta"])
            spec = ModelSpec.from_json(info)
            spec = spec.with_options(method_class(spec.method).portable_options(spec.options, lambda n: str(d / n)))
            if "values" not in info:
                raise BadInputError(f"{d}: exported by cafe-dist before raw ids (it maps values through a "
                                    "vocabulary); export the run again with the version that trained it")
            name = VALUES_FILE
            spec = spec.with_values(str(d / info["values"]) if info["values"] else None)
            model = spec.build(meta, torch.device(device))
            name = WEIGHTS_FILE
            weights = torch.load(d / WEIGHTS_FILE, map_location=device, weights_only=True)
            model.load_state_dict({k: dequantize_rows(v) if isinstance(v, dict) else v for k, v in weights.items()})
            name = STATE_FILE
            model.embedding.load_serving_state(torch.load(d / STATE_FILE, map_location="cpu", weights_only=False))
            model.eval()
        except BadInputError:
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
            said = (str(e).splitlines() or [""])[0][:200]
            raise BadInputError(f"{d / name} cannot be read ({type(e).__name__}: {said}); the exported model is "
                                "damaged or incomplete: export the run again") from None
        return cls(model, meta, info)

    @torch.no_grad()
    def logits(self, dense: np.ndarray, raw: np.ndarray) -> torch.Tensor:
        """``dense`` (B, n_dense) float32 after log(1+x); ``raw`` (F, B) int64 raw values."""
        device = next(self.model.parameters()).device
        if dense.shape[1] == 0:
            dense = np.zeros((raw.shape[1], 1), np.float32)
        kjt = one_id_per_feature(list(self.meta.sparse_features), raw).to(device)
        return self.model(torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).to(device), kjt)

    def score(self, dense: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Click probabilities, (B,) float32."""
        return torch.sigmoid(self.logits(dense, raw)).cpu().numpy()
