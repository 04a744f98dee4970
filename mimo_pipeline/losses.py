"""MIMO's losses and the baselines': the math on embeddings, and sentence-transformers loss modules.

The formulas are small pure functions on plain tensors (sentence vectors, one row per
text) returning a scalar tensor or a `LossOutput` (the scalar plus per-term floats for
logging); `tests/test_losses.py` checks each against hand-worked values. The loss
modules at the end wrap them for `sentence_transformers.SentenceTransformerTrainer`
(``forward(sentence_features, labels)``), usable by any sentence-transformers user:

- Stage 1 is sentence-transformers' own `EmbedDistillLoss` (see `stage1_loss`);
- `CachedMimoLoss`, `CachedLakdaLoss` (defined in `cached_losses`, imported from here on first
  use): gradient-cached through sentence-transformers'
  `CachedLossMixin` (GradCache), so a step of ``B`` rows has ``B − 1`` in-batch negatives
  whatever ``mini_batch_size`` bounds the memory; the ``infonce``/``xlco`` baselines use
  sentence-transformers' `CachedMultipleNegativesRankingLoss` (same formula as `info_nce`).
  Under torch.distributed every process gathers the others' embeddings (with gradients),
  so the negatives are the global batch's.

Notation: ``B`` rows per batch, ``q`` query vectors, ``p`` passage vectors, ``t`` the
frozen teacher's vectors of the English versions, ``W`` the training-only projection.

- ``distill_loss``:  ``mean_i d(W·s_i, t_i)`` with ``d`` cosine distance, squared error
  or euclidean distance.
- ``info_nce``:      ``mean_i -log softmax_j(scale · cos(q_i, p_j))[i]`` (in-batch
  negatives). Same-language pairs give the ``infonce`` baseline, cross-lingual pairs
  ``L_XLCO``: the formula is the same, only the data differs.
- ``mimo_loss``:     ``λ · info_nce(q, p) + (1 − λ) · ½ (distill(W·q, t_q) + distill(W·p, t_p))``.
- ``lakda_loss``:    ``(1 − α) · info_nce(q_a, p) + α · KL(p_b ‖ p_a)`` (Yang et al.,
  MRL 2024), see its docstring for the choices made there.

Everything is computed in float32 (autocast off), so training under bf16 autocast
changes only the encoder's matmuls, not the softmax or the cosine.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MimoInputError

#: The paper's weights (DESIGN §1), the one place they are written: λ of Stage 2's cross-lingual InfoNCE
#: (1 - λ weighs the distillation) and α of LaKDA's KL term. stages, evaluation and the Dagster configs read them.
LAMBDA = 0.2
ALPHA = 0.5

DISTILL_KINDS = ("cosine", "mse", "l2")


class LossOutput(NamedTuple):
    """A loss: ``total`` (scalar tensor with grad) and ``terms`` (floats, for logging).

    ``terms`` always holds ``"loss"`` (= ``total``) plus one entry per component.
    A named tuple, so ``total, terms = mimo_loss(...)`` works.
    """

    total: Tensor
    terms: dict[str, float]


def _fp32_ctx(t: Tensor):
    """Autocast off for the device of ``t`` (a no-op context outside autocast)."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def _check_pair(a: Tensor, b: Tensor, what: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{what}: expected 2-d [rows, dim] tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")


def cos_sim_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[len(a), len(b)]`` cosine similarities, in float32."""
    _check_pair(a, b, "cos_sim_matrix")
    with _fp32_ctx(a):
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def distill_loss(student_projected: Tensor, teacher: Tensor, kind: str = "cosine") -> Tensor:
    """Distance of projected student vectors to the teacher's vectors, row by row.

    - ``cosine``: ``mean_i (1 − cos(s_i, t_i))`` (the paper's default);
    - ``mse``:    ``mean_{i,k} (s_ik − t_ik)²`` (as ``torch.nn.functional.mse_loss``);
    - ``l2``:     ``mean_i ‖s_i − t_i‖₂``.

    The teacher side is a target: it is detached (the teacher is frozen anyway).
    """
    if kind not in DISTILL_KINDS:
        raise MimoInputError(f"unknown distillation distance {kind!r}: use one of {DISTILL_KINDS}",
                             source="distill kind")
    _check_pair(student_projected, teacher, "distill_loss")
    if student_projected.shape != teacher.shape:
        raise ValueError(f"distill_loss: student {tuple(student_projected.shape)} and teacher "
                         f"{tuple(teacher.shape)} shapes differ: is the projection's output dim the teacher's?")
    with _fp32_ctx(student_projected):
        s = student_projected.float()
        t = teacher.detach().to(device=s.device, dtype=torch.float32)
        if kind == "cosine":
            return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
        if kind == "mse":
            return F.mse_loss(s, t)
        return torch.linalg.vector_norm(s - t, dim=-1).mean()


def make_projection(student_dim: int, teacher_dim: int, *, bias: bool = True, seed: int | None = 0) -> nn.Linear:
    """The training-only linear map ``W``: student dim -> teacher dim (``y = W·x + b``).

    An ``nn.Linear``, the type `sentence_transformers.losses.EmbedDistillLoss` keeps as its
    ``projection`` (so its ``save_projection``/``load_projection`` files carry ``W`` from
    Stage 1 into Stage 2). ``seed`` draws PyTorch's default init (``U(±1/√in)``) from a
    private generator, so ``W`` does not depend on the global RNG.
    """
    if student_dim <= 0 or teacher_dim <= 0:
        raise MimoInputError(f"projection dims must be positive, got {student_dim} -> {teacher_dim}",
                             source="projection")
    linear = nn.Linear(student_dim, teacher_dim, bias=bias)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / student_dim ** 0.5
        with torch.no_grad():
            linear.weight.copy_(torch.empty_like(linear.weight).uniform_(-bound, bound, generator=g))
            if bias:
                linear.bias.copy_(torch.empty_like(linear.bias).uniform_(-bound, bound, generator=g))
    return linear


@torch.no_grad()
def fit_least_squares(linear: nn.Linear, student: Tensor, teacher: Tensor, ridge: float = 1e-3) -> nn.Linear:
    """Set ``W`` (and ``b``) to the ridge least-squares map from ``student`` rows to ``teacher`` rows.

    ``W = argmin ‖[S 1]·[W b]ᵀ − T‖² + ridge·‖W‖²`` in closed form (the bias is not
    penalised). Starting from this map instead of a random one, the first gradients into
    the student carry the teacher's structure rather than the projection's noise.
    """
    s, t = student.double(), teacher.double()
    n_in = linear.in_features
    if linear.bias is not None:
        s = torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype)], dim=1)
    reg = ridge * torch.eye(s.shape[1], dtype=s.dtype)
    if linear.bias is not None:
        reg[-1, -1] = 0.0
    sol = torch.linalg.solve(s.T @ s + reg, s.T @ t)  # [in(+1), out]
    linear.weight.copy_(sol[:n_in].T.to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(sol[-1].to(linear.bias.dtype))
    return linear


def save_projection(linear: nn.Linear, path) -> None:
    """Write ``W`` as safetensors in `EmbedDistillLoss.save_projection`'s format, atomically."""
    from safetensors.torch import save_file

    from .fileio import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in linear.state_dict().items()}, str(tmp))


def load_projection(path) -> nn.Linear:
    """Read a projection written by `save_projection` or `EmbedDistillLoss.save_projection`."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    out_dim, in_dim = state["weight"].shape
    linear = nn.Linear(in_dim, out_dim, bias="bias" in state)
    linear.load_state_dict(state)
    return linear


def info_nce(q: Tensor, p: Tensor, scale: float = 20.0, offset: int = 0) -> Tensor:
    """In-batch InfoNCE: ``mean_i −log( exp(scale·cos(q_i,p_{o+i})) / Σ_j exp(scale·cos(q_i,p_j)) )``.

    Row ``offset + i`` of ``p`` is the positive of query ``i``; every other row is a
    negative. ``p`` may have more rows than ``q``: extra rows are negatives only, and under
    data parallelism ``p`` is the passages gathered from every process with this
    process' queries at ``offset``. ``scale`` is the inverse temperature (20 = 0.05).
    """
    _check_pair(q, p, "info_nce")
    if p.shape[0] < offset + q.shape[0]:
        raise ValueError(f"info_nce: {q.shape[0]} queries at offset {offset} but only {p.shape[0]} passages")
    with _fp32_ctx(q):
        scores = cos_sim_matrix(q, p) * scale
        targets = torch.arange(offset, offset + q.shape[0], device=scores.device)
        return F.cross_entropy(scores, targets)


def mimo_loss(
    q: Tensor,
    p: Tensor,
    q_proj: Tensor,
    p_proj: Tensor,
    t_q: Tensor,
    t_p: Tensor,
    lam: float = LAMBDA,
    kind: str = "cosine",
    scale: float = 20.0,
    offset: int = 0,
) -> LossOutput:
    """MIMO's Stage 2 objective.

    ``L = λ · info_nce(q, p) + (1 − λ) · (distill(W·q, t_q) + distill(W·p, t_p)) / 2``

    ``q``/``p``: student vectors of the query (language a) and its positive passage
    (language b); ``q_proj``/``p_proj``: the same through the projection ``W``;
    ``t_q``/``t_p``: the teacher's vectors of their English versions. λ = 0.2 in the
    paper. Terms: ``loss``, ``xlco``, ``distill``, ``distill_q``, ``distill_p``. ``p`` may
    hold passages gathered from other processes (``offset`` as in `info_nce`); the
    projected and teacher rows are this process' own.
    """
    if not 0.0 <= lam <= 1.0:
        raise MimoInputError(f"lambda = {lam}: must be in [0, 1]", source="lambda")
    l_xlco = info_nce(q, p, scale, offset)
    d_q = distill_loss(q_proj, t_q, kind)
    d_p = distill_loss(p_proj, t_p, kind)
    l_distill = 0.5 * (d_q + d_p)
    total = lam * l_xlco + (1.0 - lam) * l_distill
    return LossOutput(total, _floats(loss=total, xlco=l_xlco, distill=l_distill, distill_q=d_q, distill_p=d_p))


def lakda_loss(
    q_a: Tensor,
    q_b: Tensor,
    p: Tensor,
    alpha: float = ALPHA,
    scale: float = 20.0,
    kl_scale: float = 1.0,
    detach_target: bool = False,
    offset: int = 0,
) -> LossOutput:
    """LaKDA (Yang et al., MRL 2024): ``(1 − α) · L_DPR + α · KL(p_b ‖ p_a)``.

    - ``L_DPR = info_nce(q_a, p, scale)``: the query in language a against the in-batch
      passages, row ``i`` positive;
    - ``p_a = softmax_j(kl_scale · cos(q_a_i, p_j))``, ``p_b`` the same for the parallel
      query in language b, and ``KL(p_b ‖ p_a) = (1/B) Σ_i Σ_j p_b_ij (log p_b_ij − log p_a_ij)``
      (batch mean, as ``nn.KLDivLoss(reduction="batchmean")``).

    Defaults follow the official MIMO baseline (``src/mimo/losses/cached_lakda.py`` in
    yjoonjang/MIMO): the KL term uses *unscaled* cosine similarities
    (``kl_scale = 1``) and no side is detached, so both queries and the passages get
    gradients from it. ``detach_target=True`` stops the gradient through ``p_b`` (the
    usual knowledge-distillation reading), ``kl_scale=scale`` sharpens both
    distributions like the InfoNCE term. Terms: ``loss``, ``dpr``, ``kl``. ``p`` may hold
    passages gathered from other processes (``offset`` as in `info_nce`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise MimoInputError(f"alpha = {alpha}: must be in [0, 1]", source="alpha")
    if q_a.shape != q_b.shape:
        raise ValueError(f"lakda_loss: q_a {tuple(q_a.shape)} and q_b {tuple(q_b.shape)} must be parallel")
    l_dpr = info_nce(q_a, p, scale, offset)
    with _fp32_ctx(q_a):
        log_p_a = F.log_softmax(kl_scale * cos_sim_matrix(q_a, p), dim=-1)
        log_p_b = F.log_softmax(kl_scale * cos_sim_matrix(q_b, p), dim=-1)
        if detach_target:
            log_p_b = log_p_b.detach()
        kl = F.kl_div(log_p_a, log_p_b, reduction="batchmean", log_target=True)
    total = (1.0 - alpha) * l_dpr + alpha * kl
    return LossOutput(total, _floats(loss=total, dpr=l_dpr, kl=kl))


def _floats(**terms: Tensor) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


# --------------------------------------------------------------------------- loss modules


def _gathered(t: Tensor) -> tuple[Tensor, int]:
    """``t`` gathered from every process (gradients flow back to each process' rows) and this
    process' row offset in it; ``(t, 0)`` without torch.distributed."""
    from sentence_transformers.util import all_gather_with_grad, get_rank

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, 0
    return all_gather_with_grad(t), get_rank() * t.shape[0]


def stage1_loss(model, projection: nn.Linear, kind: str = "cosine"):
    """Stage 1: sentence-transformers' `EmbedDistillLoss` with ``W`` as its projection.

    Rows are ``(text, label)``: a sentence in any language (English identity rows
    included) and the teacher's vector of its English version; the loss is
    ``mean_i d(W·s(text_i), label_i)`` = `distill_loss`. ``projection`` (e.g. fitted by
    `fit_least_squares`) becomes the loss' trainable ``projection``.
    """
    from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss

    if kind not in DISTILL_KINDS:
        raise MimoInputError(f"unknown distillation distance {kind!r}: use one of {DISTILL_KINDS}",
                             source="distill kind")
    loss = EmbedDistillLoss(model, distance_metric=kind, projection_dim=projection.out_features)
    loss.projection.load_state_dict(projection.state_dict())
    return loss


class _NoGradPrecision:
    """Gradient caching's first pass (embeddings without gradients) in bf16 when
    ``no_grad_dtype`` is set (`trainer.fit` sets it from `TrainConfig.precision`): the
    pass whose vectors only feed the loss and its gradients, not the weights' graph. The
    replay with gradients stays in the model's own precision; the vectors come back float32."""

    no_grad_dtype: torch.dtype | None = None

    def embed_minibatch(self, sentence_feature, begin, end, with_grad, copy_random_state, random_state=None):
        if with_grad or self.no_grad_dtype is None:
            return super().embed_minibatch(sentence_feature, begin, end, with_grad, copy_random_state, random_state)
        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=self.no_grad_dtype):
            reps, state = super().embed_minibatch(sentence_feature, begin, end, with_grad, copy_random_state,
                                                  random_state)
        return reps.float(), state


class _CachedTermsLoss(_NoGradPrecision):
    """What the cached MIMO losses share: the GradCache forward and the last step's terms."""

    last_terms: dict

    def forward(self, sentence_features, labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) != self.n_columns:
            raise ValueError(f"{type(self).__name__} expects {self.n_columns} text columns "
                             f"{self.columns}, got {len(sentence_features)}")
        return self.forward_cached(sentence_features, labels)

    def _finish(self, out: LossOutput, with_backward: bool) -> Tensor:
        self.last_terms = dict(out.terms)
        if with_backward:
            out.total.backward()
            return out.total.detach()
        return out.total


def contrastive_loss(model, scale: float = 20.0, mini_batch_size: int = 32):
    """The ``infonce``/``xlco`` baselines: sentence-transformers' `CachedMultipleNegativesRankingLoss`
    (cosine × ``scale``, in-batch negatives gathered across processes) = `info_nce`."""
    import torch.distributed as dist
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    class CachedContrastiveLoss(_NoGradPrecision, CachedMultipleNegativesRankingLoss):
        """`CachedMultipleNegativesRankingLoss` with the bf16 option for its no-gradient pass."""

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return CachedContrastiveLoss(model, scale=scale, mini_batch_size=mini_batch_size,
                                 gather_across_devices=distributed)


def __getattr__(name: str):
    """`CachedMimoLoss` and `CachedLakdaLoss` live in `cached_losses`, which imports
    sentence-transformers (3–4 s): importing this module, and the Dagster definitions that
    read `LAMBDA` through it, stays light; ``from mimo_pipeline.losses import CachedMimoLoss``
    still works."""
    if name in ("CachedMimoLoss", "CachedLakdaLoss"):
        from . import cached_losses

        return getattr(cached_losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
