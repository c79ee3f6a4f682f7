"""The measurable claims of the discrete bottlenecks, as two printed tables.

1. **Codebook usage.** Fraction of codes still in use (chosen at least once on held-out
   data) after training a 64-code vector quantiser — plain VQ (codebook loss), EMA,
   either with dead-code replacement, and k-means initialised — on the same data:
   an offset Gaussian cloud (16 dims) and the sklearn digits pixels (64 dims).
2. **Codebook features on a finite-state machine.** A small next-token model with a
   codebook (k=1) inserted by name at its hidden layer (width < number of states):
   purity of the state→code assignment, next-token legality, and what happens when the
   code of state ``t`` is forced on inputs that are in other states (share of top-1
   predictions legal after ``t``, versus after the true state).

The class-incremental table is ``python -m bottlenecks.continual --config
configs/dkvb_continual_digits.yaml``; speed is ``benchmarks/bench_quantizers.py``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/discrete_experiments.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from bottlenecks.data.fsm import FSMDataset, FSMWindowModel, train_fsm_model
from bottlenecks.layers.codebook_features import code_purity, find_codes, insert_codebooks
from bottlenecks.layers.quantize import VectorQuantizer

VQ_VARIANTS = {
    "plain VQ (codebook loss)": {},
    "plain VQ + dead-code replacement": {"dead_code_threshold": 1.0},
    "EMA": {"ema": True},
    "EMA + dead-code replacement": {"ema": True, "dead_code_threshold": 1.0},
    "k-means init, plain": {"init": "kmeans"},
}


def _vq_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "gaussian":
        g = torch.Generator().manual_seed(0)
        x = 3.0 + 0.5 * torch.randn(6000, 16, generator=g)
        return x[:4000], x[4000:]
    from bottlenecks.data.tables import DigitsDataset

    return DigitsDataset("train").x, DigitsDataset("test").x


def alive_fraction(x: torch.Tensor, x_eval: torch.Tensor, steps: int, **kwargs) -> tuple[float, float, float]:
    """Train a 64-code quantiser on ``x``; return the fractions of codes used on ``x`` and on
    ``x_eval``, and the quantisation MSE on ``x_eval``."""
    torch.manual_seed(0)
    vq = VectorQuantizer(x.shape[1], codebook_size=64, **kwargs)
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2) if params else None
    for _ in range(steps):
        out = vq(x[torch.randint(len(x), (256,))])
        if opt is not None:
            opt.zero_grad()
            out.losses["codebook"].backward()
            opt.step()
    vq.eval()
    with torch.no_grad():
        out, out_train = vq(x_eval), vq(x)
    alive = [(torch.bincount(o.codes[:, 0], minlength=64) > 0).float().mean().item() for o in (out_train, out)]
    return alive[0], alive[1], (out.z - x_eval).pow(2).mean().item()


def fsm_experiment(n_states: int, digits: int, width: int, codebook_size: int, steps: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    train = FSMDataset(n_states=n_states, out_degree=4, digits=digits, walk_length=16, n_sequences=2000, seed=seed)
    test = FSMDataset(n_states=n_states, out_degree=4, digits=digits, walk_length=16, n_sequences=300, seed=seed,
                      split="test")
    model = insert_codebooks(FSMWindowModel(train.base, digits, width=width), ["hidden"],
                             codebook_size=codebook_size, top_k=1, dead_code_threshold=0.05)
    t0 = time.perf_counter()
    train_fsm_model(model, train, steps=steps, aux_weight=0.3)
    seconds = time.perf_counter() - t0
    x, digit = test.tokens[:, :-1], test.token_digit[:, :-1]
    with torch.no_grad():
        logits = model(x, digit)
    end = digit == digits - 1  # positions where the whole state has been read
    codes, states = model.codes["hidden"][end], test.token_state[:, :-1][end]
    purity, _ = code_purity(codes, states, codebook_size, n_states)
    allowed = test.next_token_sets()
    legal = allowed[states, logits.argmax(-1)[end]].float().mean().item()
    rows, cols = end.nonzero(as_tuple=True)
    follows, stays, n_coded = [], [], 0
    for target in range(n_states):
        found = find_codes(codes, states == target, codebook_size, min_precision=0.8)
        if not found:
            continue
        n_coded += 1
        pick = (states != target).nonzero().flatten()[:50]
        with model.intervene("hidden", force=[found[0]["code"]]), torch.no_grad():
            pred = model(x[rows[pick]], digit[rows[pick]]).argmax(-1)[torch.arange(len(pick)), cols[pick]]
        follows.append(allowed[target, pred].float().mean())
        stays.append(allowed[states[pick], pred].float().mean())
    return {
        "purity": purity, "legal": legal, "coded": n_coded, "follows": torch.stack(follows).mean().item(),
        "stays": torch.stack(stays).mean().item(), "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer training steps")
    args = parser.parse_args()
    torch.set_num_threads(1)

    steps = 150 if args.quick else 300
    print(f"1. codebook usage: 64 codes, batch 256, {steps} steps; alive = chosen at least once on the training "
          "data / on held-out data")
    head = f"{'variant':<34}{'gaussian alive':>18}{'MSE':>8}{'digits alive':>18}{'MSE':>8}"
    print(head)
    print("-" * len(head))
    data = {name: _vq_data(name) for name in ("gaussian", "digits")}
    for label, kw in VQ_VARIANTS.items():
        cells = [alive_fraction(*data[name], steps, **kw) for name in ("gaussian", "digits")]
        print(f"{label:<34}" + "".join(
            f"{100 * a:8.1f}% /{100 * b:6.1f}%{mse:8.4f}" for a, b, mse in cells))

    print("\n2. codebook features on a finite-state machine (out-degree 4, k=1, forced code of state t)")
    head = (f"{'setting':<49}{'purity':>8}{'legal':>8}{'states w/ code':>16}{'forced: follows t':>19}"
            f"{'follows true':>14}{'train s':>9}")
    print(head)
    print("-" * len(head))
    settings = [
        ("48 states, 1 token/state, width 16, 64 codes", dict(n_states=48, digits=1, width=16, codebook_size=64)),
        ("100 states, 2 tokens/state, width 16, 256 codes", dict(n_states=100, digits=2, width=16, codebook_size=256)),
    ]
    for label, kw in settings:
        r = fsm_experiment(steps=(800 if kw["digits"] == 1 else 1500) // (2 if args.quick else 1), **kw)
        print(f"{label:<49}{r['purity']:8.3f}{r['legal']:8.3f}{r['coded']:>10}/{kw['n_states']:<5}"
              f"{r['follows']:19.3f}{r['stays']:14.3f}{r['seconds']:9.1f}")
    print("\npurity: share of code firings (at state ends) whose state is the code's majority state; legal: "
          "top-1 next token allowed by the machine; states w/ code: states owning a code of precision >= 0.8.")


if __name__ == "__main__":
    main()
