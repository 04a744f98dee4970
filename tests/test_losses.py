"""The losses against values worked out by hand on tiny tensors.

Closed forms used below (σ is the logistic function):

- cos([1,0],[1,1]) = 1/√2; cos of orthogonal vectors = 0.
- InfoNCE with q = p = I_B (orthonormal) and scale s: every row has logits s on the
  diagonal and 0 elsewhere, so the loss is log(1 + (B−1)·e^(−s)).
- softmax([1, 0]) = [σ(1), σ(−1)], and log(σ(1)/σ(−1)) = 1; hence for rows that swap
  [1,0] and [0,1]: KL = (σ(1) − σ(−1))·1 = tanh(1/2). With both sides scaled by k:
  KL = (σ(k) − σ(−k))·k = k·tanh(k/2).
"""

from __future__ import annotations

import math

import pytest
import torch

from mimo_pipeline.errors import MimoInputError
from mimo_pipeline.losses import (
    LossOutput,
    cos_sim_matrix,
    distill_loss,
    info_nce,
    lakda_loss,
    fit_least_squares,
    load_projection,
    make_projection,
    mimo_loss,
    save_projection,
)

R2 = 1 / math.sqrt(2)
E = torch.eye(2)
SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
T = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos(S, T) row-wise = 1, 1/√2


def approx(x: float, rel: float = 1e-6, abs: float = 1e-7):
    return pytest.approx(x, rel=rel, abs=abs)


# --------------------------------------------------------------------------- distill


def test_distill_cosine_by_hand():
    # rows: cos = 1 and 1/√2 -> mean(0, 1 - 1/√2)
    assert distill_loss(S, T, "cosine").item() == approx((1 - R2) / 2)


def test_distill_cosine_ignores_length():
    assert distill_loss(3 * S, 0.5 * T, "cosine").item() == approx((1 - R2) / 2)


def test_distill_mse_is_per_element_mean():
    # differences [[0,0],[-1,0]]: one squared error of 1 over 4 elements
    assert distill_loss(S, T, "mse").item() == approx(0.25)
    # 2S - T = [[1,0],[-1,1]] -> (1 + 0 + 1 + 1) / 4
    assert distill_loss(2 * S, T, "mse").item() == approx(0.75)


def test_distill_l2_is_mean_euclidean_distance():
    # row distances 0 and 1
    assert distill_loss(S, T, "l2").item() == approx(0.5)
    # [3,4] vs 0 has distance 5, second row identical
    a = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert distill_loss(a, b, "l2").item() == approx(2.5)
    assert distill_loss(a, b, "mse").item() == approx(25 / 4)


def test_distill_zero_on_identical_and_grad_only_to_student():
    s = T.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    for kind in ("cosine", "mse"):
        assert distill_loss(s, t, kind).item() == approx(0.0)
    loss = distill_loss(s + 1.0, t, "cosine")
    loss.backward()
    assert s.grad is not None and t.grad is None  # the teacher side is a fixed target


def test_distill_rejects_unknown_kind_and_shape_mismatch():
    with pytest.raises(MimoInputError, match="kl"):
        distill_loss(S, T, "kl")
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(S, torch.ones(2, 3))


# --------------------------------------------------------------------------- projection


def test_projection_maps_dims_and_is_seeded(tmp_path):
    a, b = make_projection(4, 3, seed=7), make_projection(4, 3, seed=7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, make_projection(4, 3, seed=8).weight)
    assert a(torch.ones(5, 4)).shape == (5, 3)
    assert make_projection(4, 3, bias=False).bias is None
    # y = W x + b with hand-set weights
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, -1.0]]))
        a.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    assert torch.allclose(a(torch.tensor([[1.0, 1.0, 1.0, 1.0]])), torch.tensor([[1.5, 2.0, 0.0]]))
    save_projection(a, tmp_path / "p.safetensors")
    back = load_projection(tmp_path / "p.safetensors")
    assert torch.equal(back.weight, a.weight) and torch.equal(back.bias, a.bias)
    # the file is sentence-transformers' EmbedDistillLoss.save_projection format
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "p.safetensors"))) == {"weight", "bias"}


# --------------------------------------------------------------------------- InfoNCE


def test_cos_sim_matrix_by_hand():
    assert torch.allclose(cos_sim_matrix(S, T), torch.tensor([[1.0, R2], [0.0, R2]]))


def test_info_nce_orthonormal_closed_form():
    assert info_nce(E, E, scale=20.0).item() == approx(math.log1p(math.exp(-20)), rel=1e-4)
    eye3 = torch.eye(3)
    assert info_nce(eye3, eye3, scale=1.0).item() == approx(math.log(1 + 2 * math.exp(-1)))
    # swapped positives: logits 0 on the target, s elsewhere -> log(1 + e^s)
    assert info_nce(E, SWAP, scale=2.0).item() == approx(math.log1p(math.exp(2)))


def test_info_nce_general_rows_by_hand():
    # cos matrix [[1, 1/√2], [0, 1/√2]], targets on the diagonal
    s = 20.0
    row0 = math.log1p(math.exp(s * R2 - s))   # -log(e^s / (e^s + e^{s/√2}))
    row1 = math.log1p(math.exp(-s * R2))      # -log(e^{s/√2} / (e^0 + e^{s/√2}))
    assert info_nce(S, T, scale=s).item() == approx((row0 + row1) / 2, rel=1e-5)


def test_info_nce_offset_is_this_process_rows_of_gathered_passages():
    # a process holding rows 2.. of the gathered passages [E; SWAP] = [1,0], [0,1], [0,1], [1,0]
    q = torch.tensor([[0.0, 1.0]])
    p = torch.cat([E, SWAP])
    # cosines of q to the rows: 0, 1, 1, 0; its positive is row 2 (logit 1): -log(e / (2 + 2e))
    assert info_nce(q, p, scale=1.0, offset=2).item() == approx(math.log(2 + 2 * math.e) - 1.0)
    # the two processes' means average to the one-process loss on the whole batch
    qq = torch.tensor([[1.0, 0.2], [0.3, 1.0]])
    pp = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    halves = (info_nce(qq[:1], pp, offset=0) + info_nce(qq[1:], pp, offset=1)) / 2
    assert halves.item() == approx(info_nce(qq, pp).item())
    with pytest.raises(ValueError, match="offset"):
        info_nce(q, p, offset=4)


def test_info_nce_extra_passages_are_negatives():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    row0 = math.log(1 + math.exp(-1) + math.exp(-2))  # logits 1, 0, -1 (scale 1)
    row1 = math.log(1 + 2 * math.exp(-1))             # logits 0, 1, 0
    assert info_nce(E, p, scale=1.0).item() == approx((row0 + row1) / 2)
    with pytest.raises(ValueError, match="passages"):
        info_nce(p, E)


def test_info_nce_is_cross_entropy_on_scaled_cosines():
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    cos = (q / q.norm(dim=1, keepdim=True)) @ (p / p.norm(dim=1, keepdim=True)).T
    logits = 20 * cos
    expected = -(logits.diag() - logits.logsumexp(dim=1)).mean()
    assert info_nce(q, p).item() == approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- MIMO


def _mimo_inputs():
    q, p = E.clone(), E.clone()                       # InfoNCE = log(1 + e^-20)
    q_proj, t_q = S, T                                 # distill_q = (1 - 1/√2)/2
    p_proj, t_p = S, torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # cos 0 and 1 -> distill_p = 1/2
    return q, p, q_proj, p_proj, t_q, t_p


def test_mimo_loss_by_hand():
    info = math.log1p(math.exp(-20))
    d_q, d_p = (1 - R2) / 2, 0.5
    out = mimo_loss(*_mimo_inputs(), lam=0.2)
    assert isinstance(out, LossOutput)
    total, terms = out  # unpacks as (total, terms)
    assert total.item() == approx(0.2 * info + 0.8 * (d_q + d_p) / 2, rel=1e-5)
    assert terms["xlco"] == approx(info, rel=1e-4)
    assert terms["distill_q"] == approx(d_q) and terms["distill_p"] == approx(d_p)
    assert terms["distill"] == approx((d_q + d_p) / 2)
    assert terms["loss"] == approx(total.item())


def test_mimo_loss_lambda_edges():
    info = math.log1p(math.exp(-20))
    assert mimo_loss(*_mimo_inputs(), lam=0.0).total.item() == approx(((1 - R2) / 2 + 0.5) / 2)
    assert mimo_loss(*_mimo_inputs(), lam=1.0).total.item() == approx(info, rel=1e-4)
    with pytest.raises(MimoInputError, match="lambda"):
        mimo_loss(*_mimo_inputs(), lam=1.5)


def test_mimo_loss_distance_kinds():
    info = math.log1p(math.exp(-20))
    # mse: q_proj-t_q = [[0,0],[-1,0]] -> 1/4; p_proj-t_p = [[1,-1],[0,0]] -> 2/4
    assert mimo_loss(*_mimo_inputs(), lam=0.5, kind="mse").total.item() == approx(
        0.5 * info + 0.5 * (0.25 + 0.5) / 2, rel=1e-5)
    # l2: row distances (0, 1) and (√2, 0)
    assert mimo_loss(*_mimo_inputs(), lam=0.0, kind="l2").total.item() == approx(
        (0.5 + math.sqrt(2) / 2) / 2)


# --------------------------------------------------------------------------- LaKDA


def test_lakda_kl_closed_form_unscaled():
    # p_a rows = softmax([1,0]), softmax([0,1]); p_b swapped -> KL per row tanh(1/2)
    info = math.log1p(math.exp(-20))
    out = lakda_loss(E, SWAP, E, alpha=0.5, scale=20.0)
    assert out.terms["kl"] == approx(math.tanh(0.5), rel=1e-5)
    assert out.terms["dpr"] == approx(info, rel=1e-4)
    assert out.total.item() == approx(0.5 * info + 0.5 * math.tanh(0.5), rel=1e-5)


def test_lakda_kl_scaled():
    out = lakda_loss(E, SWAP, E, alpha=1.0, kl_scale=3.0)
    assert out.total.item() == approx(3 * math.tanh(1.5), rel=1e-5)


def test_lakda_alpha_edges_and_identical_queries():
    info = math.log1p(math.exp(-20))
    assert lakda_loss(E, SWAP, E, alpha=0.0).total.item() == approx(info, rel=1e-4)
    assert lakda_loss(E, E, E, alpha=1.0).total.item() == approx(0.0, abs=1e-7)
    with pytest.raises(MimoInputError, match="alpha"):
        lakda_loss(E, E, E, alpha=-0.1)


def test_lakda_kl_matches_definition_on_random_vectors():
    g = torch.Generator().manual_seed(1)
    q_a, q_b, p = (torch.randn(4, 6, generator=g) for _ in range(3))
    pa = torch.softmax(cos_sim_matrix(q_a, p), dim=1)
    pb = torch.softmax(cos_sim_matrix(q_b, p), dim=1)
    kl = (pb * (pb.log() - pa.log())).sum() / 4
    assert lakda_loss(q_a, q_b, p, alpha=1.0).total.item() == approx(kl.item(), rel=1e-5)


def test_lakda_gradient_sides():
    g = torch.Generator().manual_seed(2)
    q_a, q_b, p = (torch.randn(3, 4, generator=g).requires_grad_(True) for _ in range(3))
    lakda_loss(q_a, q_b, p, alpha=1.0).total.backward()
    assert q_b.grad is not None and q_b.grad.abs().sum() > 0  # MIMO's default: nothing detached
    q_a2, q_b2, p2 = (t.detach().clone().requires_grad_(True) for t in (q_a, q_b, p))
    lakda_loss(q_a2, q_b2, p2, alpha=1.0, detach_target=True).total.backward()
    assert q_b2.grad is None and q_a2.grad.abs().sum() > 0


def test_losses_stay_float32_under_autocast():
    # training may autocast the encoder to bf16; the loss math must not follow it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = info_nce(S.bfloat16(), T.bfloat16(), scale=20.0)
        kl = lakda_loss(E, SWAP, E, alpha=1.0).total
    assert loss.dtype == torch.float32 and kl.dtype == torch.float32
    assert kl.item() == approx(math.tanh(0.5), rel=1e-5)
    row0, row1 = math.log1p(math.exp(20 * R2 - 20)), math.log1p(math.exp(-20 * R2))
    assert loss.item() == approx((row0 + row1) / 2, rel=1e-5)


def test_projection_least_squares_recovers_an_exact_affine_map():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(64, 5, generator=g)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    proj = fit_least_squares(make_projection(5, 3), s, s @ a.T + b, ridge=0.0)
    assert torch.allclose(proj.weight, a, atol=1e-5)
    assert torch.allclose(proj.bias, b, atol=1e-5)
    assert torch.allclose(proj(s), s @ a.T + b, atol=1e-4)


def test_the_readme_loss_example_trains_on_the_stock_trainer(tmp_path, monkeypatch):
    """The README's ten-line example, run as written on sentence-transformers' own, unsubclassed
    SentenceTransformerTrainer, with tiny local models in place of the hub ids."""
    import re

    import torch

    from mimo_pipeline.losses import make_projection, save_projection
    from tests.conftest import REPO, build_tiny_bert

    words = ["wer ist da ?", "qui est là ?", "who is there ?"]
    student = build_tiny_bert(tmp_path / "student", words, dropout=0.0)
    teacher = build_tiny_bert(tmp_path / "teacher", words, seed=1)
    save_projection(make_projection(32, 32, seed=0), tmp_path / "stage1.projection.safetensors")
    block = next(b for b in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
                 if "CachedMimoLoss" in b)
    assert len([line for line in block.splitlines() if line.strip()]) <= 11
    code = (block.replace('"intfloat/multilingual-e5-small"', repr(str(student)))
            .replace('"sentence-transformers/all-mpnet-base-v2"', repr(str(teacher))))
    monkeypatch.chdir(tmp_path)
    space = {}
    exec(compile(code, "README.md", "exec"), space)  # noqa: S102
    trained = space["student"]
    from sentence_transformers import SentenceTransformer

    untouched = SentenceTransformer(str(student), device="cpu")
    moved = [k for k, v in trained.state_dict().items() if not torch.equal(v.cpu(), untouched.state_dict()[k])]
    assert moved, "the example's training step changed no weight"
    assert space["SentenceTransformerTrainer"].__module__.startswith("sentence_transformers.")  # the stock one


def test_the_dagster_definitions_import_without_sentence_transformers():
    """Every Dagster process (a run, the UI's code server, a sensor tick) imports the definitions;
    sentence-transformers (3–4 s) is imported only by what trains. The gradient-cached losses still
    import from `losses`."""
    import subprocess
    import sys

    code = ("import sys, mimo_pipeline.definitions, mimo_pipeline.losses as losses\n"
            "assert 'sentence_transformers' not in sys.modules, 'imported sentence_transformers'\n"
            "assert losses.CachedMimoLoss.__module__ == 'mimo_pipeline.cached_losses'\n"
            "assert 'sentence_transformers' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
