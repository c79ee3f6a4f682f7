"""Vector quantisers: nearest codes, straight-through gradients, EMA, k-means, dead codes, RVQ, FSQ."""

import lightning as L
import pytest
import torch

from bottlenecks.data.datamodule import ArrayDataModule
from bottlenecks.layers.quantize import (
    FiniteScalarQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
    kmeans,
    nearest_codes,
)
from bottlenecks.models.module import BottleneckModel


def _blobs(n, d=16, seed=0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return offset + 0.5 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("groups", [1, 3])
def test_nearest_codes_match_brute_force(distance, groups):
    x, c = torch.randn(groups, 200, 8), torch.randn(groups, 50, 8)
    if distance == "cosine":
        x, c = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(c, dim=-1)
    brute = torch.cdist(x, c).argmin(-1)
    assert torch.equal(nearest_codes(x, c, 1, distance), brute)
    top3 = nearest_codes(x, c, 3, distance)
    assert torch.equal(top3[..., 0], brute)
    assert torch.equal(top3, torch.cdist(x, c).topk(3, largest=False).indices)
    # block-by-block scoring gives the same answer
    assert torch.equal(nearest_codes(x, c, 3, distance, max_scores=700), top3)


def test_nearest_codes_rejects_k_larger_than_codebook():
    with pytest.raises(ValueError, match="k=5 needs at least k codes, but the codebook has 4"):
        nearest_codes(torch.randn(1, 3, 2), torch.randn(1, 4, 2), k=5)


def test_forward_is_nearest_code_with_straight_through_gradient():
    vq = VectorQuantizer(8, codebook_size=32)
    h = torch.randn(64, 8, requires_grad=True)
    out = vq(h)
    assert out.codes.shape == (64, 1) and out.z.shape == (64, 8)
    assert torch.allclose(out.z, vq.codebook[0][out.codes[:, 0]])
    assert torch.equal(out.codes[:, 0], torch.cdist(h.detach(), vq.codebook[0].detach()).argmin(-1))
    (out.z.sum() + out.losses["codebook"]).backward()
    assert torch.equal(h.grad, torch.ones_like(h))  # identity through the quantiser
    used = torch.zeros(32, dtype=torch.bool)
    used[out.codes[:, 0]] = True
    assert (vq.codebook.grad[0][used].abs().sum(-1) > 0).all()  # codebook loss reaches chosen codes
    assert (vq.codebook.grad[0][~used] == 0).all()
    assert set(out.losses) == {"codebook", "commitment"}
    assert {"perplexity", "dead_fraction"} <= set(out.metrics)


def test_heads_quantise_chunks_with_separate_or_shared_codebooks():
    vq = VectorQuantizer(12, codebook_size=16, num_heads=3)
    out = vq(torch.randn(10, 12))
    assert vq.codebook.shape == (3, 16, 4) and out.codes.shape == (10, 3)
    for head in range(3):
        assert torch.allclose(out.z[:, 4 * head : 4 * head + 4], vq.codebook[head][out.codes[:, head]])
    shared = VectorQuantizer(12, codebook_size=16, num_heads=3, shared_codebook=True)
    assert shared.codebook.shape == (1, 16, 4) and shared(torch.randn(10, 12)).codes.shape == (10, 3)
    with pytest.raises(ValueError, match="num_heads=5 does not divide in_features=12"):
        VectorQuantizer(12, num_heads=5)
    projected = VectorQuantizer(12, codebook_size=16, num_heads=2, code_dim=3)
    assert projected(torch.randn(4, 12)).z.shape == (4, 6) and projected.out_features == 6


def test_cosine_codes_are_unit_vectors():
    vq = VectorQuantizer(6, codebook_size=8, distance="cosine")
    out = vq(5 * torch.randn(20, 6))
    assert torch.allclose(out.z.norm(dim=-1), torch.ones(20), atol=1e-5)


def test_ema_moves_codes_to_their_inputs_without_codebook_loss():
    vq = VectorQuantizer(4, codebook_size=1, ema=True, ema_decay=0.9)
    assert not any(p.requires_grad for p in vq.parameters())
    x = torch.full((32, 4), 2.0)
    for _ in range(100):
        out = vq(x)
    assert "codebook" not in out.losses
    assert torch.allclose(vq.codebook[0, 0], torch.full((4,), 2.0), atol=1e-3)


def test_nan_inputs_raise_and_never_reach_the_codebook():
    vq = VectorQuantizer(4, codebook_size=8, ema=True, dead_code_threshold=1.0)
    before = vq.codebook.clone()
    bad = torch.randn(16, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        vq(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        vq.init_from_data(bad)
    assert torch.equal(vq.codebook, before)


def test_kmeans_beats_random_codes_and_needs_enough_samples():
    x = _blobs(600, d=4)
    random_codes = x[:10].unsqueeze(0)
    centroids = kmeans(x.unsqueeze(0), 10, iters=10)

    def distortion(c):
        return torch.cdist(x, c[0]).min(-1).values.pow(2).mean()

    assert distortion(centroids) < 0.8 * distortion(random_codes)
    vq = VectorQuantizer(4, codebook_size=32, init="kmeans")
    assert vq.needs_data_init()
    with pytest.raises(ValueError, match="k-means initialisation of 32 codes needs at least 32 vectors"):
        vq.init_from_data(x[:20])
    vq.init_from_data(x)
    assert not vq.needs_data_init()
    assert (torch.bincount(vq(x).codes[:, 0], minlength=32) > 0).all()  # every k-means code is used


def _alive_fraction(**kwargs):
    torch.manual_seed(0)
    x, x_eval = _blobs(2000, seed=1), _blobs(1000, seed=2)
    vq = VectorQuantizer(16, codebook_size=64, **kwargs)
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2) if params else None
    for _ in range(150):
        out = vq(x[torch.randint(len(x), (256,))])
        if opt is not None:
            opt.zero_grad()
            out.losses["codebook"].backward()
            opt.step()
    vq.eval()
    codes = vq(x_eval).codes[:, 0]
    return (torch.bincount(codes, minlength=64) > 0).float().mean().item(), vq


def test_ema_with_dead_code_replacement_keeps_codes_alive_where_plain_vq_collapses():
    plain, _ = _alive_fraction()
    revived, vq = _alive_fraction(ema=True, dead_code_threshold=1.0)
    assert plain < 0.2  # random codes far from the data: only the nearest few ever win
    assert revived >= 0.9
    assert float(vq.dead_fraction()) < 0.1


def test_suppressed_codes_are_never_chosen():
    vq = VectorQuantizer(4, codebook_size=8)
    x = torch.randn(200, 4)
    top = int(torch.bincount(vq(x).codes[:, 0], minlength=8).argmax())
    vq.suppress([top])
    assert not (vq(x).codes == top).any()
    vq.suppress([top], suppressed=False)
    assert (vq(x).codes == top).any()


def test_residual_stages_reduce_the_error():
    x = torch.randn(512, 8)
    errors = []
    for stages in (1, 2, 4):
        torch.manual_seed(0)
        rvq = ResidualVectorQuantizer(8, num_quantizers=stages, codebook_size=16)
        rvq.init_from_data(x)
        rvq.eval()
        out = rvq(x)
        assert out.codes.shape == (512, stages)
        errors.append((out.z - x).pow(2).mean().item())
    assert errors[0] > errors[1] > errors[2]
    h = x[:5].clone().requires_grad_(True)
    rvq.train()
    rvq(h).z.sum().backward()
    assert torch.equal(h.grad, torch.ones_like(h))


def test_fsq_codes_cover_the_implicit_codebook_and_round_trip():
    fsq = FiniteScalarQuantizer(6, levels=[3, 4, 5])
    assert fsq.codebook_size == 60
    h = (3 * torch.randn(4000, 6)).requires_grad_(True)
    out = fsq(h)
    assert out.codes.min() >= 0 and out.codes.max() < 60
    assert torch.allclose(fsq.codes_to_scalars(out.codes[:, 0]), out.extras["scalars"], atol=1e-6)
    out.z.sum().backward()
    assert h.grad.abs().sum() > 0  # rounding is straight-through
    with pytest.raises(ValueError, match="integers >= 2"):
        FiniteScalarQuantizer(6, levels=[1, 4])


def test_vq_trains_in_the_model_with_kmeans_init_at_fit_start():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(4, 8, generator=g)
    y = torch.randint(4, (800,), generator=g)
    x = centres[y] + 0.5 * torch.randn(800, 8, generator=g)
    dm = ArrayDataModule.from_arrays(x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:], batch_size=64)
    vq = VectorQuantizer(8, codebook_size=16, init="kmeans", ema=True)
    model = BottleneckModel(vq, num_classes=4, lr=1e-2, loss_weights={"commitment": 0.25})
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    assert bool(vq.initialised)
    res = trainer.test(model, dm, verbose=False)[0]
    assert res["test/task_acc"] > 0.9  # chance is 0.25
