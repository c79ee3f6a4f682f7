"""The LightningModule that composes encoder features, bottleneck and head."""

from bottlenecks.models.module import BottleneckModel, FeatureNorm, masked_concept_bce

__all__ = ["BottleneckModel", "FeatureNorm", "masked_concept_bce"]
