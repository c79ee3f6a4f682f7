"""The LightningModule that composes encoder features, bottleneck and head, and training stages."""

from bottlenecks.models.module import BottleneckModel, FeatureNorm, masked_concept_bce
from bottlenecks.models.stages import CBMTrainingMode, Stage, TrainingStages

__all__ = ["BottleneckModel", "CBMTrainingMode", "FeatureNorm", "Stage", "TrainingStages", "masked_concept_bce"]
