"""Class-incremental streams, metrics, baselines, and DKVB against forgetting on digits."""

import math

import lightning as L
import pytest
import torch

from bottlenecks.continual import (
    ClassIncrementalStream,
    JointLinearProbe,
    LightningLearner,
    NearestClassMean,
    SequentialLinearProbe,
    backward_transfer,
    forgetting,
    format_table,
    min_accuracy,
    run_class_incremental,
    summarize,
    worst_case_accuracy,
)
from bottlenecks.data.modules import DigitsDataModule
from bottlenecks.layers.key_value import DiscreteKeyValueBottleneck
from bottlenecks.models.module import BottleneckModel


@pytest.fixture(scope="module")
def digits_stream():
    return ClassIncrementalStream.from_datamodule(DigitsDataModule(), classes_per_task=2)


def test_stream_tasks_have_disjoint_classes_and_cover_the_data(digits_stream):
    s = digits_stream
    assert len(s) == 5 and s.feature_dim == 64 and s.num_classes == 10
    assert [t.classes for t in s] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    for t in s:
        assert set(t.y_train.unique().tolist()) == set(t.classes) == set(t.y_test.unique().tolist())
    x, y = s.seen_test(1)
    assert set(y.unique().tolist()) == {0, 1, 2, 3}
    shuffled = ClassIncrementalStream(s[0].x_train, s[0].y_train, s[0].x_test, s[0].y_test,
                                      task_classes=[[1], [0]])
    assert [t.classes for t in shuffled] == [[1], [0]]
    with pytest.raises(ValueError, match="disjoint"):
        ClassIncrementalStream(s[0].x_train, s[0].y_train, s[0].x_test, s[0].y_test, task_classes=[[0, 1], [1]])
    with pytest.raises(ValueError, match="has no training or no test examples"):
        ClassIncrementalStream(s[0].x_train, s[0].y_train, s[0].x_test, s[0].y_test, task_classes=[[0], [5]],
                               num_classes=10)


def test_metrics_on_a_known_accuracy_matrix():
    R = torch.tensor([[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 1.0]])
    assert summarize(R)["avg_acc"] == pytest.approx((0.4 + 0.6 + 1.0) / 3)
    assert forgetting(R) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)
    assert backward_transfer(R) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    # a periodic evaluation during task 2 saw task 0 at 0.1: the stability gap counts it
    periodic = [(10, 2, torch.tensor([0.1, 0.7, math.nan]))]
    assert min_accuracy(R) == pytest.approx((0.4 + 0.6) / 2)
    assert min_accuracy(R, periodic) == pytest.approx((0.1 + 0.6) / 2)
    assert worst_case_accuracy(R, periodic) == pytest.approx(1.0 / 3 + 2 / 3 * 0.35)


def test_nearest_class_mean_predicts_only_seen_classes(digits_stream):
    ncm = NearestClassMean()
    res = run_class_incremental(ncm, digits_stream)
    assert torch.isfinite(ncm.predict(digits_stream[0].x_test)).all()  # every class seen by now
    assert res.accuracy[0, 1:].eq(0).all()  # classes of unseen tasks are never predicted
    assert res.metrics["avg_acc"] > 0.85  # class means of digits pixels separate well


def test_dkvb_forgets_far_less_than_a_sequential_probe_and_approaches_the_joint_bound(digits_stream):
    s = digits_stream
    L.seed_everything(0, verbose=False)
    kv = DiscreteKeyValueBottleneck(64, num_heads=16, keys_per_head=256, code_dim=32, projection="random",
                                    value_dim=10)
    dkvb = LightningLearner(
        BottleneckModel(kv, num_classes=10, optimizer="sgd", momentum=0.0, lr=16.0, lr_schedule="constant",
                        standardize_features=False),
        epochs_per_task=3, name="dkvb",
    )
    res_kv = run_class_incremental(dkvb, s, eval_every=10, unlabelled=s.all_train_features())
    res_seq = run_class_incremental(SequentialLinearProbe(64, 10, epochs_per_task=3), s, eval_every=10)
    res_joint = run_class_incremental(JointLinearProbe(64, 10, epochs_per_task=3), s)
    assert res_seq.metrics["forgetting"] > 0.5  # the probe overwrites old classes
    assert res_seq.metrics["avg_acc"] < 0.3
    assert res_kv.metrics["forgetting"] < 0.05
    assert res_kv.metrics["avg_acc"] > res_seq.metrics["avg_acc"] + 0.5
    assert res_kv.metrics["avg_acc"] > res_joint.metrics["avg_acc"] - 0.05
    assert res_kv.metrics["min_acc"] > 0.9  # no stability gap either
    # periodic evaluations happened every 10 steps, NaN for tasks not yet seen
    assert len(res_kv.evaluations) == sum(res_kv.steps_per_task) // 10
    step, task, accs = res_kv.evaluations[0]
    assert step == 10 and task == 0 and torch.isnan(accs[1:]).all()
    table = format_table([res_kv, res_seq, res_joint])
    assert "dkvb" in table and "WC-ACC" in table
