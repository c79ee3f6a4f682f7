"""Codebook features: top-k code sums, hooks by layer name, interventions, and the FSM experiment."""

import pytest
import torch
from torch import nn

from bottlenecks.data.fsm import FSMDataset, FSMWindowModel, train_fsm_model
from bottlenecks.layers.codebook_features import (
    CodebookFeatures,
    code_purity,
    find_codes,
    insert_codebooks,
)


def test_output_is_the_sum_of_the_top_k_most_similar_codes():
    cb = CodebookFeatures(8, codebook_size=20, top_k=3)
    h = torch.randn(5, 8, requires_grad=True)
    out = cb(h)
    sims = torch.nn.functional.normalize(h.detach(), dim=-1) @ torch.nn.functional.normalize(cb.codebook.detach(), dim=-1).t()
    assert torch.equal(out.codes, sims.topk(3).indices)
    assert torch.allclose(out.z, cb.codebook[out.codes].sum(1), atol=1e-6)
    out.z.pow(2).sum().backward()
    assert torch.allclose(h.grad, 2 * out.z.detach())  # straight through to the input
    used = torch.zeros(20, dtype=torch.bool)
    used[out.codes.flatten()] = True
    assert (cb.codebook.grad[~used] == 0).all() and (cb.codebook.grad[used].abs().sum(-1) > 0).all()


def test_codebook_smaller_than_k_is_refused():
    with pytest.raises(ValueError, match="codebook_size=4 is smaller than top_k=8"):
        CodebookFeatures(8, codebook_size=4, top_k=8)


def test_force_and_suppress_codes_and_undo():
    cb = CodebookFeatures(6, codebook_size=10, top_k=2)
    h = torch.randn(50, 6)
    top = int(cb(h).codes[:, 0].mode().values)
    cb.suppress([top])
    assert not (cb(h).codes == top).any()
    cb.force([7])
    assert (cb(h).codes == 7).any(-1).all()
    with pytest.raises(ValueError, match="cannot force more than top_k=2"):
        cb.force([1, 2])
    cb.clear_interventions()
    assert (cb(h).codes[:, 0] == top).any()
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 10\)"):
        cb.suppress([10])


class _Block(nn.Module):
    """Returns a tuple, as transformer blocks often do."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.lin(x), "aux"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.block = _Block()
        self.out = nn.Linear(6, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.out(self.block(self.inp(x))[0])


def test_insert_by_layer_name_bypass_and_remove():
    net = _Net()
    x = torch.randn(7, 5, 4)  # leading dims are kept: (batch, seq, features)
    reference = net(x)
    model = insert_codebooks(net, ["inp", "block"], codebook_size=16, top_k=2, widths={"block": 6})
    y = model(x)
    assert set(model.codes) == {"inp", "block"} and model.codes["block"].shape == (7, 5, 2)
    assert not torch.allclose(y, reference)
    assert set(model.codebook_losses()) == {"reconstruction", "commitment"}
    with model.bypassed():
        assert torch.equal(model(x), reference)
        assert model.codes["inp"].shape == (7, 5, 2)  # codes are still recorded
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("codebooks.inp") for n in names) and any(n.startswith("model.inp") for n in names)
    with pytest.raises(ValueError, match="no submodule named 'missing'"):
        insert_codebooks(net, ["missing"])
    assert torch.equal(model.remove()(x), reference)


def test_find_codes_and_purity():
    labels = torch.arange(100) % 4
    codes = torch.stack([labels, labels + 4], 1)  # code c and c + 4 fire exactly for label c
    codes[0, 1] = 5  # one impure firing
    purity, majority = code_purity(codes, labels, 10, 4)
    assert purity == pytest.approx(199 / 200)
    assert majority[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3] and (majority[8:] == -1).all()
    found = find_codes(codes, labels == 2, 10, min_precision=0.9)
    assert [f["code"] for f in found] == [2, 6] and found[0]["precision"] == 1.0 and found[0]["recall"] == 1.0


def test_fsm_dataset_walks_follow_the_machine():
    ds = FSMDataset(n_states=30, out_degree=3, digits=2, walk_length=10, n_sequences=50)
    assert ds.base == 6 and ds.tokens.shape == (50, 20)
    legal = torch.zeros(30, 30, dtype=torch.bool)
    legal[torch.arange(30).unsqueeze(1), ds.transitions] = True
    assert legal[ds.states[:, :-1], ds.states[:, 1:]].all()
    assert torch.equal(ds.tokens[:, 0] * 6 + ds.tokens[:, 1], ds.states[:, 0])
    item = ds[3]
    assert torch.equal(item["y"][:-1], item["x"][1:])
    test = FSMDataset(n_states=30, out_degree=3, digits=2, walk_length=10, n_sequences=50, split="test")
    assert torch.equal(test.transitions, ds.transitions) and not torch.equal(test.tokens, ds.tokens)
    with pytest.raises(ValueError, match="out_degree"):
        FSMDataset(n_states=5, out_degree=6)


def test_fsm_states_map_to_pure_codes_and_forcing_a_code_steers_the_prediction():
    n_states, width = 24, 8  # more states than hidden units
    train = FSMDataset(n_states=n_states, out_degree=3, walk_length=16, n_sequences=1000)
    test = FSMDataset(n_states=n_states, out_degree=3, walk_length=16, n_sequences=100, split="test")
    model = insert_codebooks(FSMWindowModel(train.base, width=width), ["hidden"], codebook_size=48, top_k=1,
                             dead_code_threshold=0.05)
    train_fsm_model(model, train, steps=400, aux_weight=0.3)
    x, digit, state = test.tokens[:, :-1], test.token_digit[:, :-1], test.token_state[:, :-1]
    with torch.no_grad():
        logits = model(x, digit)
    codes, states = model.codes["hidden"].reshape(-1, 1), state.reshape(-1)
    purity, _ = code_purity(codes, states, 48, n_states)
    assert purity > 0.9
    allowed = test.next_token_sets()  # (state, next token) pairs the machine allows
    assert allowed[states, logits.argmax(-1).reshape(-1)].float().mean() > 0.9
    state_codes = {s: find_codes(codes, states == s, 48, min_precision=0.8) for s in range(n_states)}
    state_codes = {s: found[0]["code"] for s, found in state_codes.items() if found}
    assert len(state_codes) >= 0.8 * n_states  # most states own a code that fires (almost) only for them
    # force the code of state `target` on inputs in other states: predictions follow `target`
    follows, stays = [], []
    for target, code in state_codes.items():
        others = (state[:, 0] != target).nonzero().flatten()[:10]
        with model.intervene("hidden", force=[code]), torch.no_grad():
            pred = model(x[others], digit[others]).argmax(-1)
        follows.append(allowed[target, pred].float().mean())
        stays.append(allowed[state[others], pred].float().mean())
    assert torch.stack(follows).mean() > 0.9
    assert torch.stack(stays).mean() < 0.5
