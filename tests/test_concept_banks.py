"""Concept banks (CAVs in one batched solve, text, files) and concept-set files (LaBo JSON,
Label-free CBM txt, CSV), with the bad inputs each must refuse."""

import json

import pytest
import torch

from bottlenecks.concepts import (
    ConceptBank,
    ConceptSet,
    encoder_id,
    learn_cavs,
    load_concept_set,
    load_prior,
    shapes_concept_set,
)
from bottlenecks.data.assets import asset_path


class FakeText:
    """A text encoder: each sentence → a fixed random unit vector of width ``dim``."""

    name = "fake-text"

    def __init__(self, dim):
        self.dim = dim

    def encode_text(self, texts):
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)))
            v = torch.randn(self.dim, generator=g)
            out.append(v / v.norm())
        return torch.stack(out)


# ------------------------------------------------------------------------------------ CAVs
def test_cavs_in_one_solve_score_concepts_and_flag_the_useless_one(concept_arrays):
    x, c, _ = concept_arrays
    noise = (torch.rand(len(x), 1, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    table = torch.cat([c, noise], 1)  # the last "concept" has nothing to do with the features
    table[::3, 2] = float("nan")  # a third of c2 unlabelled: not an example either way
    names = list("abcde") + ["noise"]
    with pytest.warns(UserWarning, match=r"near chance.*noise"):
        bank = ConceptBank.from_cavs(x[:1500], table[:1500], names, encoder_id="toy@1")
    assert bank.vectors.shape == (6, 20) and bank.source == "cav"
    assert (bank.accuracy[:5] > 0.95).all() and bank.accuracy[5] < 0.6
    assert bank.useless() == ["noise"]
    # the vectors live in the features' own coordinates: their hyperplanes classify new rows
    pred = (bank.project(x[1500:]) > 0).float()
    assert ((pred[:, :5] == c[1500:]).float().mean(0) > 0.95).all()
    # one solve: the batched fit of 6 columns equals the fit of each column alone
    v_all, b_all, _, _ = learn_cavs(x[:1500], table[:1500])
    v_one, b_one, _, _ = learn_cavs(x[:1500], table[:1500, 1:2])
    cos = torch.nn.functional.cosine_similarity(v_all[1], v_one[0], dim=0)
    assert cos > 0.999


def test_cavs_from_positive_and_negative_examples(concept_arrays):
    x, c, _ = concept_arrays
    pos = {"a": x[c[:, 0] == 1][:300], "b": x[c[:, 1] == 1][:300]}
    neg = {"a": x[c[:, 0] == 0][:300], "b": x[c[:, 1] == 0][:300]}
    bank = ConceptBank.from_examples(pos, neg)
    assert bank.names == ["a", "b"] and (bank.accuracy > 0.95).all()
    # one shared pool of negatives (random images, as in PCBM)
    bank = ConceptBank.from_examples({"a": x[c[:, 0] == 1][:300]}, x[c[:, 0] == 0][:300])
    assert bank.accuracy[0] > 0.95


def test_more_concepts_than_the_data_supports_is_an_error_naming_them(concept_arrays):
    x, c, _ = concept_arrays
    table = c[:400].clone()
    table[:, 3] = 0.0
    table[:2, 3] = 1.0  # 2 positive examples of "d"
    with pytest.raises(ValueError, match=r"cannot support 1 of 5 concepts: 'd' \(\d positive"):
        ConceptBank.from_cavs(x[:400], table, list("abcde"))


# ------------------------------------------------------------------------------------ files
def test_a_bank_round_trips_through_its_file(tmp_path, concept_arrays):
    x, c, _ = concept_arrays
    bank = ConceptBank.from_cavs(x[:800], c[:800], list("abcde"), encoder_id="lite0@0123")
    path = bank.save(tmp_path / "bank.safetensors")
    back = ConceptBank.load(path)
    assert back.names == bank.names and back.encoder_id == "lite0@0123" and back.source == "cav"
    for a, b in ((back.vectors, bank.vectors), (back.intercepts, bank.intercepts), (back.accuracy, bank.accuracy)):
        assert torch.equal(a, b)
    assert torch.allclose(back.project(x[:10]), bank.project(x[:10]))
    # plain (names, vectors), the form other modules hand around, round-trips too
    plain = ConceptBank(["u", "v"], torch.randn(2, 7))
    back = ConceptBank.load(plain.save(tmp_path / "plain.safetensors"))
    assert back.intercepts is None and back.encoder_id is None and torch.equal(back.vectors, plain.vectors)
    # a safetensors file that is not a bank
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors is not a concept bank"):
        ConceptBank.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file format")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable"):
        ConceptBank.load(tmp_path / "junk.safetensors")


def test_bank_constructor_refuses_bad_lists():
    with pytest.raises(ValueError, match="is empty"):
        ConceptBank([], torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"repeats concepts: 'red' and 'red' \(entries 0 and 2\)"):
        ConceptBank(["red", "blue", "red"], torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"shape \(2, dim\)"):
        ConceptBank(["a", "b"], torch.randn(3, 4))


def test_a_bank_from_another_encoder_or_width_is_refused():
    bank = ConceptBank(["a"], torch.randn(1, 8), encoder_id=encoder_id("identity:8"))
    bank.check_encoder(encoder_id("identity:8"))
    with pytest.raises(ValueError, match=r"built on encoder 'identity@.*' but the model's encoder is 'identity@"):
        bank.check_encoder(encoder_id("identity:16"))
    with pytest.warns(UserWarning, match="does not record its encoder"):
        ConceptBank(["a"], torch.randn(1, 8)).check_encoder("x@1")


def test_text_bank_and_a_text_encoder_of_another_width():
    bank = ConceptBank.from_text(["red", "circle"], FakeText(12), sentences=["a red object", "a circle"], dim=12)
    assert bank.vectors.shape == (2, 12) and bank.info["sentences"] == ["a red object", "a circle"]
    with pytest.raises(ValueError, match=r"12-dimensional \(the vectors are fake-text text embeddings.*open_clip.*"
                                         r"features are 20-dimensional"):
        ConceptBank.from_text(["red", "circle"], FakeText(12), dim=20)


# ------------------------------------------------------------------------------- concept sets
def test_concept_sets_in_both_published_formats_and_csv(tmp_path):
    labo = {"red circle": ["red", "round shape"], "blue square": ["blue", "four corners"], "red square": ["red", "four corners"]}
    (tmp_path / "class2concepts.json").write_text(json.dumps(labo))
    cs = load_concept_set(tmp_path / "class2concepts.json")
    assert cs.concepts == ["red", "round shape", "blue", "four corners"]
    P = cs.prior(["red square", "red circle"], ["four corners", "red", "unused"])
    assert P.tolist() == [[1, 1, 0], [0, 1, 0]]
    (tmp_path / "cifar_filtered.txt").write_text("# label-free CBM concepts\nfeathers\n\nwheels\nfur\n")
    assert load_concept_set(tmp_path / "cifar_filtered.txt").concepts == ["feathers", "wheels", "fur"]
    (tmp_path / "c.csv").write_text("concept,text,class,weight\nred,a red thing,red circle,1\n"
                                    "round,a round thing,red circle,0.5\nred,,red square,1\n")
    cs = load_concept_set(tmp_path / "c.csv")
    assert cs.concepts == ["red", "round"] and cs.texts == ["a red thing", "a round thing"]
    assert load_prior(tmp_path / "c.csv", ["red square", "red circle"], ["red", "round"]).tolist() == [[1, 0], [1, 0.5]]
    # the shipped Shapes vocabulary in both formats
    shapes_json = load_concept_set(asset_path("shapes_class2concepts.json"))
    shapes_txt = load_concept_set(asset_path("shapes_concepts.txt"))
    assert len(shapes_txt) == 10 and set(shapes_json.concepts) < set(shapes_txt.concepts)
    full = shapes_concept_set()
    P = full.prior(["red circle", "blue triangle"], full.concepts)
    assert P.sum(1).tolist() == [2, 2] and P[0, full.concepts.index("striped_background")] == 0


def test_concept_files_with_bad_lines_name_the_file_and_line(tmp_path):
    p = tmp_path / "concepts.txt"
    p.write_bytes(b"red\nblue\n\xff\xfe broken\ngreen\n")
    with pytest.raises(ValueError, match=r"concepts.txt, line 3: not valid UTF-8"):
        load_concept_set(p)
    p.write_text("red\nblue\nred\n")
    with pytest.raises(ValueError, match=r"concepts.txt, line 3: concept 'red' repeats line 1"):
        load_concept_set(p)
    p.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="lists no concepts"):
        load_concept_set(p)
    q = tmp_path / "c.csv"
    q.write_text("concept,text\nred,a red thing\nblue,a,b\n")
    with pytest.raises(ValueError, match=r"c.csv, line 3: 3 fields but the header has 2"):
        load_concept_set(q)
    j = tmp_path / "class2concepts.json"
    j.write_text(json.dumps({"a": ["x", "x"]}))
    with pytest.raises(ValueError, match="class 'a' lists concepts more than once"):
        load_concept_set(j)
    j.write_text(json.dumps({"a": []}))
    with pytest.raises(ValueError, match="class 'a' must map to a non-empty list"):
        load_concept_set(j)
    j.write_text('{"a": ["x",\n "y"\n')
    with pytest.raises(ValueError, match=r"class2concepts.json, line \d: not valid JSON"):
        load_concept_set(j)
    with pytest.raises(ValueError, match="no concepts for classes"):
        ConceptSet(["x"], class_concepts={"a": {"x": 1.0}}).prior(["b"], ["x"])
