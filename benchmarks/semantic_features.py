"""Semantic-features experiment (after Furby et al., "Can we constrain concept bottleneck models
to learn semantically meaningful input features?"): do a CBM's concept attributions land on the
pixels of the concept, and does that fail when two concepts always co-occur?

    python benchmarks/semantic_features.py                  # 5-30 min on 2 CPU cores, by load
    python benchmarks/semantic_features.py --n-train 3000 --n-eval 128 --methods saliency grad_cam

Two Shapes training sets, identical except for one pair of concepts:

* ``independent`` — the standard Shapes: ``striped_background`` ~ Bernoulli(0.5), independent of
  the object's colour.
* ``co-occurring`` — ``striped_background`` holds exactly when the object is ``red`` (the two
  concepts always co-occur; they sit in different places: ``red`` on the object,
  ``striped_background`` on the background).

On each, a joint CBM (lite0 features → 10 concepts → linear head) is trained. Both are then
evaluated on the *same* images — red objects on striped backgrounds — with the location metric
(:func:`bottlenecks.analysis.location_scores`): the attribution of the ``red`` unit should lie on
the object (its ground-truth mask), the attribution of ``striped_background`` on the background.
``chance`` is what a uniformly random map scores (the mask's area fraction); "mass on partner's
mask" is the share of the attribution on the *other* concept's region (the background for
``red``, the object for ``striped_background``); a random and an oracle map are scored as checks.
Behaviourally, the table above it reports how often each unit fires on the other concept alone
(on the independent test split).

Prints a markdown table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bottlenecks.analysis import attribute, attribution_map, cooccurrence_matrix, location_scores  # noqa: E402
from bottlenecks.data.shapes import SHAPES_CONCEPTS, ShapesDataset  # noqa: E402
from bottlenecks.encoders import shared_encoder  # noqa: E402
from bottlenecks.layers.concept import ConceptBottleneck  # noqa: E402
from bottlenecks.models.module import BottleneckModel  # noqa: E402

RED, STRIPED = SHAPES_CONCEPTS.index("red"), SHAPES_CONCEPTS.index("striped_background")


class CooccurringShapes(ShapesDataset):
    """Shapes where ``striped_background`` is present exactly when the object is red.

    Only the background draw changes (the same latent table otherwise), so the two datasets
    differ in that one dependency.
    """

    def _sample_scenes(self) -> None:
        super()._sample_scenes()
        red = self.factors["colour"] == 0
        self.factors["striped_background"] = red
        self._concepts[:, STRIPED] = torch.from_numpy(red.astype(np.float32))


def load(ds: ShapesDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(len(ds))]
    return (
        torch.stack([it["x"] for it in items]),
        torch.stack([it["concepts"] for it in items]),
        torch.stack([it["y"] for it in items]),
        torch.stack([it["masks"] for it in items]),
    )


def train_cbm(h: torch.Tensor, c: torch.Tensor, y: torch.Tensor, encoder: dict, steps: int, seed: int) -> BottleneckModel:
    """Joint CBM on frozen features, full-batch AdamW (features fit in memory)."""
    torch.manual_seed(seed)
    model = BottleneckModel(
        ConceptBottleneck(h.shape[1], concept_names=list(SHAPES_CONCEPTS)),
        num_classes=9,
        encoder=encoder,
        lr=1e-2,
    )
    model.norm.fit(h)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    model.train()
    batch = {"x": h, "concepts": c, "y": y}
    for _ in range(steps):
        y_hat, out = model(h, concepts=c)
        loss = model.compute_losses(batch, y_hat, out)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-eval", type=int, default=64, help="red-on-stripes test images scored by the location metric")
    p.add_argument("--image-size", type=int, default=96, help="lite0 input size (the 64 px images are resized)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["saliency", "integrated_gradients", "grad_cam@blocks.4"],
        help="attribution methods; 'grad_cam@<layer>' reads that encoder layer (blocks.4: 6x6 at 96 px)",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/semantic_features.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    encoder = {"name": "lite0", "image_size": args.image_size}
    enc = shared_encoder(encoder)
    t0 = time.time()

    # evaluation images: red objects on striped backgrounds (all red images of the co-occurring test split)
    test_co = CooccurringShapes(split="test", n=args.n_test, seed=args.seed)
    x_te, c_te, y_te, m_te = load(test_co)
    red_rows = (c_te[:, RED] == 1).nonzero().flatten()[: args.n_eval]
    x_ev, m_ev = x_te[red_rows], m_te[red_rows]

    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "settings": {}}
    rows = []
    for setting, cls in (("independent", ShapesDataset), ("co-occurring", CooccurringShapes)):
        train = cls(split="train", n=args.n_train, seed=args.seed)
        x, c, y, _ = load(train)
        co = cooccurrence_matrix(c)
        h = enc.encode_dataset(train, batch_size=64, progress=False)
        model = train_cbm(h, c, y, encoder, args.steps, args.seed)
        # accuracy on an independent test split (where red and stripes do not go together)
        test_ind = ShapesDataset(split="test", n=args.n_test, seed=args.seed)
        h_ind = enc.encode_dataset(test_ind, batch_size=64, progress=False)
        with torch.no_grad():
            y_hat, out = model(h_ind)
        c_ind = test_ind.concept_table()
        concept_acc = ((out.probs > 0.5).float() == c_ind).float().mean(0)
        entry = {
            "P(striped | red) train": float(co[RED, STRIPED]),
            "task_acc (independent test)": float((y_hat.argmax(1) == test_ind.targets()).float().mean()),
            "red_acc (independent test)": float(concept_acc[RED]),
            "striped_acc (independent test)": float(concept_acc[STRIPED]),
            "location": {},
        }
        # how often each unit fires on the other concept alone (independent test split)
        p_on = out.probs > 0.5
        striped_only = (c_ind[:, STRIPED] == 1) & (c_ind[:, RED] == 0)
        red_only = (c_ind[:, RED] == 1) & (c_ind[:, STRIPED] == 0)
        entry["P(red unit on | striped, not red)"] = float(p_on[striped_only, RED].float().mean())
        entry["P(striped unit on | red, plain background)"] = float(p_on[red_only, STRIPED].float().mean())
        for concept, k, partner in (("red", RED, STRIPED), ("striped_background", STRIPED, RED)):
            for spec in args.methods:
                method, _, layer = spec.partition("@")
                kwargs = {"layer": layer} if layer else {}
                if method == "integrated_gradients":
                    kwargs["baselines"] = 0.5  # mid grey, not black
                maps = torch.cat(
                    [
                        attribution_map(attribute(model, x_ev[s : s + 16], unit=concept, method=method, **kwargs))
                        for s in range(0, len(x_ev), 16)
                    ]
                )
                own = location_scores(maps, m_ev[:, k])
                other = location_scores(maps, m_ev[:, partner])
                entry["location"][f"{concept}/{spec}"] = {"own_mask": own.as_dict(), "partner_mask": other.as_dict()}
                rows.append((setting, concept, spec, own.pointing_game, own.mass_inside, own.chance,
                             other.mass_inside, own.n, own.n_zero_maps))
        results["settings"][setting] = entry
        print(f"[{time.time() - t0:.0f}s] {setting}: " + ", ".join(f"{k}={v:.3f}" for k, v in entry.items() if k != "location"), flush=True)

    g = torch.Generator().manual_seed(args.seed)
    for concept, k in (("red", RED), ("striped_background", STRIPED)):
        partner = RED if k == STRIPED else STRIPED
        for label, maps in (
            ("(random map)", torch.rand(m_ev.shape[0], *m_ev.shape[-2:], generator=g)),
            ("(oracle map)", m_ev[:, k].float()),
        ):
            sc, other = location_scores(maps, m_ev[:, k]), location_scores(maps, m_ev[:, partner])
            rows.append((label, concept, "-", sc.pointing_game, sc.mass_inside, sc.chance, other.mass_inside, sc.n, 0))

    print(f"\n{len(x_ev)} red objects on striped backgrounds; lite0 at {args.image_size} px\n")
    print("| training set | concept | method | pointing game | mass inside own mask | chance | mass on partner's mask | scored (all-zero maps) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]} ({r[8]}) |")
    results["table"] = rows
    results["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{time.time() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
