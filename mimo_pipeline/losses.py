"""MIMO's losses and the baselines', as math on embeddings only.

Every function takes plain tensors (sentence vectors, one row per text) and returns a
scalar tensor, or a `LossOutput` (the scalar plus per-term floats for logging). No model
calls happen here: `training` embeds the texts and hands the vectors in, which is what
lets `tests/test_losses.py` check every formula against hand-worked values.

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


class Projection(nn.Module):
    """The training-only linear map ``W``: student dim -> teacher dim (``y = W·x + b``).

    ``seed`` makes the initialisation independent of the global RNG (PyTorch's default
    ``nn.Linear`` init, drawn from a private generator), so two runs that build the
    projection at different points of a program still start from the same ``W``.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, bias: bool = True, seed: int | None = 0):
        super().__init__()
        if student_dim <= 0 or teacher_dim <= 0:
            raise MimoInputError(f"projection dims must be positive, got {student_dim} -> {teacher_dim}",
                                 source="projection")
        self.linear = nn.Linear(student_dim, teacher_dim, bias=bias)
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            bound = 1.0 / student_dim ** 0.5  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in))
            with torch.no_grad():
                self.linear.weight.copy_(torch.empty_like(self.linear.weight).uniform_(-bound, bound, generator=g))
                if bias:
                    self.linear.bias.copy_(torch.empty_like(self.linear.bias).uniform_(-bound, bound, generator=g))

    @torch.no_grad()
    def fit_least_squares(self, student: Tensor, teacher: Tensor, ridge: float = 1e-3) -> "Projection":
        """Set ``W`` (and ``b``) to the ridge least-squares map from ``student`` rows to ``teacher`` rows.

        ``W = argmin ‖[S 1]·[W b]ᵀ − T‖² + ridge·‖W‖²`` in closed form. Starting from this
        map instead of a random one, the first gradients into the student carry the
        teacher's structure rather than the projection's noise.
        """
        s, t = student.double(), teacher.double()
        if self.linear.bias is not None:
            s = torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype)], dim=1)
        reg = ridge * torch.eye(s.shape[1], dtype=s.dtype)
        if self.linear.bias is not None:
            reg[-1, -1] = 0.0
        sol = torch.linalg.solve(s.T @ s + reg, s.T @ t)  # [in(+1), out]
        self.linear.weight.copy_(sol[:self.student_dim].T.to(self.linear.weight.dtype))
        if self.linear.bias is not None:
            self.linear.bias.copy_(sol[-1].to(self.linear.bias.dtype))
        return self

    @property
    def student_dim(self) -> int:
        return self.linear.in_features

    @property
    def teacher_dim(self) -> int:
        return self.linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.to(self.linear.weight.dtype))

    def save(self, path) -> None:
        """Write the weights as safetensors (dims and bias recoverable from the shapes)."""
        from safetensors.torch import save_file

        from .fileio import atomic_path

        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))

    @classmethod
    def load(cls, path) -> "Projection":
        """Read a projection written by `save` (e.g. Stage 1's, to start Stage 2 with)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        w = state["linear.weight"]
        proj = cls(w.shape[1], w.shape[0], bias="linear.bias" in state, seed=None)
        proj.load_state_dict(state)
        return proj


def info_nce(q: Tensor, p: Tensor, scale: float = 20.0) -> Tensor:
    """In-batch InfoNCE: ``mean_i −log( exp(scale·cos(q_i,p_i)) / Σ_j exp(scale·cos(q_i,p_j)) )``.

    Row ``i`` of ``p`` is the positive of query ``i``; the other rows are its negatives.
    ``p`` may have more rows than ``q`` (extra rows are negatives only). ``scale`` is the
    inverse temperature (20 = temperature 0.05).
    """
    _check_pair(q, p, "info_nce")
    if p.shape[0] < q.shape[0]:
        raise ValueError(f"info_nce: {q.shape[0]} queries but only {p.shape[0]} passages")
    with _fp32_ctx(q):
        scores = cos_sim_matrix(q, p) * scale
        targets = torch.arange(q.shape[0], device=scores.device)
        return F.cross_entropy(scores, targets)


def mimo_loss(
    q: Tensor,
    p: Tensor,
    q_proj: Tensor,
    p_proj: Tensor,
    t_q: Tensor,
    t_p: Tensor,
    lam: float = 0.2,
    kind: str = "cosine",
    scale: float = 20.0,
) -> LossOutput:
    """MIMO's Stage 2 objective.

    ``L = λ · info_nce(q, p) + (1 − λ) · (distill(W·q, t_q) + distill(W·p, t_p)) / 2``

    ``q``/``p``: student vectors of the query (language a) and its positive passage
    (language b); ``q_proj``/``p_proj``: the same through the projection ``W``;
    ``t_q``/``t_p``: the teacher's vectors of their English versions. λ = 0.2 in the
    paper. Terms: ``loss``, ``xlco``, ``distill``, ``distill_q``, ``distill_p``.
    """
    if not 0.0 <= lam <= 1.0:
        raise MimoInputError(f"lambda = {lam}: must be in [0, 1]", source="lambda")
    l_xlco = info_nce(q, p, scale)
    d_q = distill_loss(q_proj, t_q, kind)
    d_p = distill_loss(p_proj, t_p, kind)
    l_distill = 0.5 * (d_q + d_p)
    total = lam * l_xlco + (1.0 - lam) * l_distill
    return LossOutput(total, _floats(loss=total, xlco=l_xlco, distill=l_distill, distill_q=d_q, distill_p=d_p))


def lakda_loss(
    q_a: Tensor,
    q_b: Tensor,
    p: Tensor,
    alpha: float = 0.5,
    scale: float = 20.0,
    kl_scale: float = 1.0,
    detach_target: bool = False,
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
    distributions like the InfoNCE term. Terms: ``loss``, ``dpr``, ``kl``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise MimoInputError(f"alpha = {alpha}: must be in [0, 1]", source="alpha")
    if q_a.shape != q_b.shape:
        raise ValueError(f"lakda_loss: q_a {tuple(q_a.shape)} and q_b {tuple(q_b.shape)} must be parallel")
    l_dpr = info_nce(q_a, p, scale)
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
