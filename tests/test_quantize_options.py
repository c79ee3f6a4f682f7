"""Quantiser options: the rotation trick, SimVQ, lookup-free quantisation (LFQ), usage metrics
and the collapse warning; each trains from Python and from a YAML through the CLI, and takes
every edit its units support."""

import csv
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from bottlenecks.cli import main
from bottlenecks.editing import edit_log
from bottlenecks.layers.codes import rotate_to
from bottlenecks.layers.quantize import LookupFreeQuantizer, ResidualVectorQuantizer, VectorQuantizer
from bottlenecks.models.module import BottleneckModel
from _concept_data import blobs_dm

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ----------------------------------------------------------------- rotation trick
def test_rotation_trick_matches_the_rotation_built_by_hand():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(5, generator=g).requires_grad_(True)
    q = 2.5 * torch.randn(5, generator=g)
    out = rotate_to(e, q)
    assert torch.allclose(out, q, atol=1e-5)  # the forward value is the code
    grad_out = torch.randn(5, generator=g)
    out.backward(grad_out)
    # by hand: u, v unit vectors of e and q; R = I - 2wwᵀ + 2vuᵀ with w = (u + v) / |u + v|
    ed = e.detach()
    u, v = ed / ed.norm(), q / q.norm()
    w = (u + v) / (u + v).norm()
    R = torch.eye(5) - 2 * torch.outer(w, w) + 2 * torch.outer(v, u)
    assert torch.allclose(R @ u, v, atol=1e-5)  # R turns the input's direction onto the code's
    assert torch.allclose(R.T @ R, torch.eye(5), atol=1e-5)  # and is a rotation
    lam = q.norm() / ed.norm()
    assert torch.allclose(e.grad, lam * R.T @ grad_out, atol=1e-5)
    # unlike straight-through (which copies grad_out), the gradient turns with the vector:
    # its angle to the input equals the output gradient's angle to the code
    assert not torch.allclose(e.grad, grad_out, atol=1e-2)
    assert math.isclose(float(F.cosine_similarity(e.grad, ed, 0)), float(F.cosine_similarity(grad_out, q, 0)),
                        abs_tol=1e-5)
    zero = torch.zeros(5, requires_grad=True)
    assert torch.equal(rotate_to(zero, q), q)  # a zero input still takes its code's value


@pytest.mark.parametrize("simvq", [False, True])
def test_vq_rotation_gradient_reaches_the_input_and_differs_from_straight_through(simvq):
    h = torch.randn(64, 8)
    grads = {}
    for gradient in ("straight_through", "rotation"):
        torch.manual_seed(0)
        vq = VectorQuantizer(8, codebook_size=16, gradient=gradient, simvq=simvq)
        x = h.clone().requires_grad_(True)
        out = vq(x)
        assert torch.allclose(out.z, vq.codes_tensor()[0][out.codes[:, 0]], atol=1e-5)  # value: the code
        (out.z * torch.arange(8.0)).sum().backward()
        grads[gradient] = x.grad
    assert torch.equal(grads["straight_through"], torch.arange(8.0).expand(64, 8))
    assert grads["rotation"].abs().sum() > 0
    assert not torch.allclose(grads["rotation"], grads["straight_through"], atol=1e-2)


def test_residual_vq_takes_the_rotation_gradient():
    rvq = ResidualVectorQuantizer(6, num_quantizers=2, codebook_size=8, init="random", gradient="rotation")
    x = torch.randn(32, 6, requires_grad=True)
    out = rvq(x)
    out.z.sum().backward()
    assert x.grad.abs().sum() > 0 and not torch.allclose(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="gradient must be 'straight_through' or 'rotation'"):
        VectorQuantizer(4, gradient="rotate")


# -------------------------------------------------------------------------- SimVQ
def test_simvq_codebook_is_frozen_and_the_linear_map_moves_every_code():
    vq = VectorQuantizer(8, codebook_size=32, simvq=True)
    assert "codebook" in dict(vq.named_buffers()) and "codebook" not in dict(vq.named_parameters())
    assert [n for n, p in vq.named_parameters()] == ["codebook_map"]
    x = torch.randn(16, 8, requires_grad=True)
    out = vq(x)
    (out.z.square().mean() + out.losses["codebook"] + out.losses["commitment"]).backward()
    assert x.grad.abs().sum() > 0  # the encoder side gets a gradient
    assert vq.codebook_map.grad.abs().sum() > 0  # and so does the map
    before = vq.codes_tensor().detach().clone()
    torch.optim.SGD(vq.parameters(), lr=0.1).step()
    moved = (vq.codes_tensor().detach() - before).norm(dim=-1)[0]
    used = torch.zeros(32, dtype=torch.bool)
    used[out.codes[:, 0]] = True
    assert (moved[~used] > 0).all()  # codes no input chose move too (plain VQ leaves them put)
    with pytest.raises(ValueError, match="cannot also follow EMA updates"):
        VectorQuantizer(8, simvq=True, ema=True)
    with pytest.raises(ValueError, match="set dead_code_threshold: 0"):
        VectorQuantizer(8, simvq=True, dead_code_threshold=1.0)


def test_simvq_kmeans_init_puts_the_codes_on_the_data():
    x = 3 + torch.randn(400, 4)
    vq = VectorQuantizer(4, codebook_size=8, simvq=True, init="kmeans")
    with torch.no_grad():
        vq.codebook_map.mul_(0.1)  # a map that moved: the k-means codes must still land on the data
    vq.init_from_data(x)
    assert torch.equal(vq.codebook_map[0], torch.eye(4))
    assert (torch.bincount(vq(x).codes[:, 0], minlength=8) > 0).all()


# ---------------------------------------------------------------------------- LFQ
def test_lfq_codes_are_the_signs_and_the_entropies_match_brute_force():
    lfq = LookupFreeQuantizer(6, code_dim=3, temperature=0.5)
    h = torch.randn(50, 6, requires_grad=True)
    out = lfq(h)
    u = lfq.project_in(h).detach()
    assert torch.equal(out.codes[:, 0], ((u > 0).long() * torch.tensor([1, 2, 4])).sum(-1))
    assert torch.equal(lfq.codes_to_bits(out.codes[:, 0]), torch.sign(u))
    # brute force over the 8 codes: p(c | u) = softmax(2 u·c / temperature)
    grid = lfq.codes_to_bits(torch.arange(8))
    p = torch.softmax(2 * u @ grid.T / 0.5, -1)
    sample = -(p * p.log()).sum(-1).mean()
    mean_p = p.mean(0)
    codebook = -(mean_p * mean_p.log()).sum()
    s, c = lfq.entropies(u)
    assert torch.allclose(s, sample, atol=1e-5) and torch.allclose(c, codebook, atol=1e-5)
    assert torch.allclose(out.losses["entropy"], sample - codebook, atol=1e-5)
    (out.z.sum() + out.losses["entropy"]).backward()
    assert lfq.project_in.weight.grad.abs().sum() > 0 and h.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"code_dim must lie in \[1, 16\]"):
        LookupFreeQuantizer(6, code_dim=20)


def test_lfq_entropy_loss_spreads_the_codes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g) * torch.tensor([5.0, 1, 1, 1, 0.1, 0.1, 0.1, 0.1])

    def used_codes(weight):
        torch.manual_seed(1)
        lfq = LookupFreeQuantizer(8, code_dim=4, temperature=0.1)
        opt = torch.optim.Adam(lfq.parameters(), lr=1e-2)
        for _ in range(150):
            loss = weight * lfq(x).losses["entropy"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return int((torch.bincount(lfq.eval()(x).codes[:, 0], minlength=16) > 0).sum())

    assert used_codes(0.0) < 16  # the random projection alone leaves codes unused
    assert used_codes(1.0) == 16  # the entropy loss puts every code of the implicit codebook in use


# ------------------------------------------------------------- training outcomes


@pytest.mark.parametrize(
    "make",
    [
        lambda: VectorQuantizer(8, codebook_size=16, gradient="rotation", init="kmeans"),
        lambda: VectorQuantizer(8, codebook_size=16, simvq=True),
        lambda: VectorQuantizer(8, codebook_size=16, num_heads=2, code_dim=4, simvq=True, gradient="rotation"),
        lambda: LookupFreeQuantizer(8, code_dim=6),
    ],
    ids=["rotation", "simvq", "simvq_rotation_projected", "lfq"],
)
def test_each_option_trains_above_chance(make):
    torch.manual_seed(0)
    model = BottleneckModel(make(), num_classes=4, lr=1e-2, loss_weights={"commitment": 0.25, "entropy": 0.1})
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, blobs_dm())
    assert {"train/perplexity", "train/usage_perplexity", "train/dead_fraction"} <= set(trainer.callback_metrics)
    res = trainer.test(model, blobs_dm(), verbose=False)[0]
    assert res["test/task_acc"] > 0.8  # chance is 0.25


@pytest.mark.parametrize("config", ["vq_lfq_digits.yaml", "vq_simvq_digits.yaml"])
def test_option_trains_from_its_yaml_through_the_cli(tmp_path, config):
    main(["fit", "--config", str(CONFIGS / config), "--trainer.max_epochs", "4",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--trainer.enable_progress_bar", "false"])
    with open(next((tmp_path / "runs").rglob("metrics.csv"))) as f:  # the CSV logger's table
        rows = list(csv.DictReader(f))
    test_acc = [float(r["test/task_acc"]) for r in rows if r.get("test/task_acc")]
    assert test_acc and test_acc[-1] > 0.5  # 10 digits: chance is 0.1 (full 30-epoch runs: docs/discrete.md)
    assert any(r.get("train/usage_perplexity") for r in rows)


# --------------------------------------------------------------- collapse warning
def _train(vq, x, steps=120):
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2) if params else None  # an EMA codebook has none
    for _ in range(steps):
        out = vq(x[torch.randint(len(x), (128,))])
        if opt is not None:
            opt.zero_grad()
            out.losses["codebook"].backward()
            opt.step()
    return out


def test_a_collapsing_codebook_warns_once_and_a_healthy_one_does_not():
    x = 3.0 + 0.5 * torch.randn(2000, 16)  # data far from the random codes: only a few ever win
    with pytest.warns(RuntimeWarning, match=r"codebook collapse: only \d+% of the 64 codes") as record:
        out = _train(VectorQuantizer(16, codebook_size=64, dead_window=50), x)
    assert sum("codebook collapse" in str(w.message) for w in record) == 1  # once, not every step
    assert float(out.metrics["dead_fraction"]) > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = _train(VectorQuantizer(16, codebook_size=64, dead_window=50, init="kmeans", ema=True,
                                     dead_code_threshold=0.5), x)
    assert float(out.metrics["dead_fraction"]) < 0.1
    assert float(out.metrics["usage_perplexity"]) > 32


def test_collapsed_lfq_warns():
    lfq = LookupFreeQuantizer(8, code_dim=6, dead_window=20)
    x = torch.randn(256, 8)
    with torch.no_grad():
        lfq.project_in.bias.fill_(5.0)  # every input gets the all-ones code
    with pytest.warns(RuntimeWarning, match="codebook collapse"):
        for _ in range(25):
            lfq(x)
    assert float(lfq(x).metrics["dead_fraction"]) > 0.9


# -------------------------------------------------------------------------- edits
@pytest.mark.parametrize(
    "make",
    [
        lambda: VectorQuantizer(12, codebook_size=16, simvq=True, gradient="rotation"),
        lambda: LookupFreeQuantizer(12, code_dim=4),
    ],
    ids=["simvq_rotation", "lfq"],
)
def test_units_and_edits_work_for_the_new_options(make):
    from test_editing import _assert_same_state, _edits_for, _outputs, _state

    model = BottleneckModel(make(), num_classes=3).eval()
    x = torch.randn(40, 12)
    edits = _edits_for(model, x)
    assert {e["kind"] for e in edits} >= {"suppress_codes"}
    state, (y0, z0) = _state(model), _outputs(model, x)
    log = edit_log(model)
    for spec in edits:
        try:
            log.apply(spec)
        except ValueError as err:  # no gradient reaches a straight-through unit table
            assert spec["kind"] == "retrain_values", err
            continue
        y1, z1 = _outputs(model, x)
        assert not torch.equal(z1, z0) or not torch.equal(y1, y0), spec["kind"]
        if spec["kind"] == "suppress_codes":
            b = model.bottleneck
            acts = b.unit_activations(model(x)[1])[:, b.units().index(spec["units"][0])]
            assert (acts == 0).all()
        log.undo()
        _assert_same_state(model, state)
