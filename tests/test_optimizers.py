"""The Muon optimiser choice: it trains above chance, orthogonalises the updates of weight
matrices only (AdamW moves biases, codebooks and the output layer), and survives a checkpoint."""

import lightning as L
import pytest
import torch

from bottlenecks.layers.quantize import VectorQuantizer
from bottlenecks.models.module import BottleneckModel
from bottlenecks.models.optimizers import MuonAdamW
from _concept_data import blobs_dm




def _model(optimizer="muon", lr=1e-2, lr_schedule="cosine"):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, codebook_size=16, num_heads=2, code_dim=4)  # project_in: an 8 -> 8 matrix
    return BottleneckModel(vq, num_classes=4, head_hidden=[16], optimizer=optimizer, lr=lr,
                           loss_weights={"commitment": 0.25}, lr_schedule=lr_schedule)


def test_muon_trains_above_chance():
    model = _model()
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, blobs_dm())
    assert isinstance(trainer.optimizers[0], MuonAdamW)
    assert trainer.test(model, blobs_dm(), verbose=False)[0]["test/task_acc"] > 0.9  # chance is 0.25


def test_muon_updates_only_the_weight_matrices():
    model = _model(lr=0.01, lr_schedule="constant")
    opt = model.configure_optimizers()
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    # hidden matrices: the bottleneck's projection and the head's hidden layer; not the output layer
    assert names == {"bottleneck.project_in.weight", "head.0.weight"}
    assert all(p.ndim == 2 for g in opt.param_groups if g["use_muon"] for p in g["params"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(64, 8)
    y = torch.randint(4, (64,))
    loss = torch.nn.functional.cross_entropy(model(x)[0], y) + sum(model(x)[1].losses.values())
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        step = (p.detach() - before[n]) / 0.01
        if n in names:  # Muon: an orthogonalised update, all singular values alike
            sv = torch.linalg.svdvals(step)
            assert sv.max() / sv.min() < 2.0, n
            assert not torch.allclose(step.abs(), step.abs().mean().expand_as(step), rtol=0.05), n
        elif p.grad is not None and (p.grad != 0).all():  # AdamW's first step: lr * sign(grad)
            assert torch.allclose(step, -torch.sign(p.grad), atol=1e-3), n
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}])


def test_muon_state_and_schedule_reach_both_halves_across_a_checkpoint():
    model = _model(lr_schedule="constant")
    opt = model.configure_optimizers()
    x, y = torch.randn(32, 8), torch.randint(4, (32,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x)[0], y).backward()
        opt.step()
    state = opt.state_dict()
    assert len(state["state"]) == sum(1 for p in model.parameters() if p.grad is not None)
    opt2 = _model(lr_schedule="constant").configure_optimizers()
    opt2.load_state_dict(state)
    for g in opt2.param_groups:
        g["lr"] = 0.123  # what a schedule does
    assert all(g["lr"] == 0.123 for half in opt2._halves for g in half.param_groups)
    assert all(half.state is opt2.state for half in opt2._halves)
