"""Class-incremental learning: streams of tasks, learners, the evaluation harness and its metrics."""

from bottlenecks.continual.harness import ContinualResult, format_table, per_task_accuracy, run_class_incremental
from bottlenecks.continual.learners import (
    ContinualLearner,
    JointLinearProbe,
    LightningLearner,
    NearestClassMean,
    SequentialLinearProbe,
)
from bottlenecks.continual.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    min_accuracy,
    summarize,
    worst_case_accuracy,
)
from bottlenecks.continual.stream import ClassIncrementalStream, Task

__all__ = [
    "ClassIncrementalStream",
    "ContinualLearner",
    "ContinualResult",
    "JointLinearProbe",
    "LightningLearner",
    "NearestClassMean",
    "SequentialLinearProbe",
    "Task",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "format_table",
    "min_accuracy",
    "per_task_accuracy",
    "run_class_incremental",
    "summarize",
    "worst_case_accuracy",
]
