"""The gradient-cached MIMO losses: `CachedMimoLoss` (Stage 2) and `CachedLakdaLoss` (LaKDA).

sentence-transformers' `CachedLossMixin` (GradCache) is their base, so this module imports
sentence-transformers; `losses` holds the formulas they call and re-exports both names on
first use, so that importing `losses` (and the Dagster definitions) does not pay for it.
"""

from __future__ import annotations

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import Tensor, nn

from .errors import MimoInputError
from .losses import ALPHA, DISTILL_KINDS, LAMBDA, _CachedTermsLoss, _gathered, lakda_loss, mimo_loss


class CachedMimoLoss(_CachedTermsLoss, CachedLossMixin, nn.Module):
    """MIMO's Stage 2 loss, gradient-cached: `mimo_loss` over the whole batch.

    Columns ``(anchor, positive)``: a query in language a and its positive passage in
    language b ≠ a. Labels ``[B, 2, teacher_dim]``: the teacher's vectors of their English
    versions, precomputed (the teacher never runs here). ``projection`` is Stage 1's ``W``
    (trained on, saved with `save_projection`); ``lam`` weighs the cross-lingual InfoNCE.
    """

    columns = ("anchor", "positive")
    n_columns = 2

    def __init__(self, model, projection: nn.Linear, lam: float = LAMBDA, kind: str = "cosine",
                 scale: float = 20.0, mini_batch_size: int = 32):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise MimoInputError(f"lambda = {lam}: must be in [0, 1]", source="lambda")
        if kind not in DISTILL_KINDS:
            raise MimoInputError(f"unknown distillation distance {kind!r}: use one of {DISTILL_KINDS}",
                                 source="distill kind")
        self.model, self.projection = model, projection
        self.lam, self.kind, self.scale, self.mini_batch_size = lam, kind, scale, mini_batch_size
        self.last_terms = {}

    def calculate_loss(self, reps, labels=None, *, with_backward: bool = False) -> Tensor:
        if labels is None or labels.ndim != 3 or labels.shape[1] != 2:
            raise ValueError("CachedMimoLoss needs labels [batch, 2, teacher_dim]: the teacher's vectors of the "
                             "English query and passage")
        q, p = torch.cat(reps[0]), torch.cat(reps[1])
        p_all, offset = _gathered(p)
        t = labels.to(q.device)
        w = self.projection
        out = mimo_loss(q, p_all, w(q.to(w.weight.dtype)), w(p.to(w.weight.dtype)), t[:, 0], t[:, 1],
                        lam=self.lam, kind=self.kind, scale=self.scale, offset=offset)
        return self._finish(out, with_backward)

    def get_config_dict(self) -> dict:
        return {"lam": self.lam, "distill": self.kind, "scale": self.scale, "mini_batch_size": self.mini_batch_size,
                "projection": f"{self.projection.in_features}->{self.projection.out_features}"}


class CachedLakdaLoss(_CachedTermsLoss, CachedLossMixin, nn.Module):
    """The LaKDA baseline, gradient-cached: `lakda_loss` over the whole batch.

    Columns ``(anchor, positive, anchor_b)``: the query in language a, its positive
    passage in a language drawn independently of a and b, and the same query in
    language b (the official `cached_lakda.py` layout). No labels.
    """

    columns = ("anchor", "positive", "anchor_b")
    n_columns = 3

    def __init__(self, model, alpha: float = ALPHA, scale: float = 20.0, kl_scale: float = 1.0,
                 mini_batch_size: int = 32):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise MimoInputError(f"alpha = {alpha}: must be in [0, 1]", source="alpha")
        self.model, self.alpha, self.scale, self.kl_scale = model, alpha, scale, kl_scale
        self.mini_batch_size = mini_batch_size
        self.last_terms = {}

    def calculate_loss(self, reps, labels=None, *, with_backward: bool = False) -> Tensor:
        q_a, p, q_b = (torch.cat(r) for r in reps)
        p_all, offset = _gathered(p)
        out = lakda_loss(q_a, q_b, p_all, alpha=self.alpha, scale=self.scale, kl_scale=self.kl_scale,
                         offset=offset)
        return self._finish(out, with_backward)

    def get_config_dict(self) -> dict:
        return {"alpha": self.alpha, "scale": self.scale, "kl_scale": self.kl_scale,
                "mini_batch_size": self.mini_batch_size}
