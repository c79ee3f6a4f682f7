"""Analysis of trained bottleneck models.

* interventions, their policies and curves, concept leakage (:mod:`~bottlenecks.analysis.interventions`,
  :mod:`~bottlenecks.analysis.policies`, :mod:`~bottlenecks.analysis.intervention_curves`,
  :mod:`~bottlenecks.analysis.leakage`);
* attribution through the frozen encoder with captum and the decomposition of a decision onto
  units (:mod:`~bottlenecks.analysis.attribution`);
* concept-quality metrics (:mod:`~bottlenecks.analysis.concept_metrics`);
* unit reports, plots and the HTML report of a run (:mod:`~bottlenecks.analysis.units`,
  :mod:`~bottlenecks.analysis.plots`, :mod:`~bottlenecks.analysis.html_report`,
  ``bottlenecks report RUN_DIR``);
* linear probes, code analysis, the information plane and the end-of-run report.

Every function here reaches a bottleneck only through its contract
(:mod:`bottlenecks.layers.base`): units, their activations, the declared hooks.
"""

from bottlenecks.analysis.attribution import (
    METHODS,
    ClassLogits,
    Contributions,
    UnitActivations,
    attribute,
    attribution_map,
    concept_activation_maps,
    spatial_layer,
    unit_contributions,
)
from bottlenecks.analysis.codes import code_label_counts, code_purity, find_codes
from bottlenecks.analysis.concept_metrics import (
    CUB_ATTRIBUTE_PARTS,
    LocationScores,
    causal_concept_effect,
    completeness_score,
    concept_alignment_score,
    concept_location,
    concept_part_masks,
    concept_purity_matrix,
    cooccurrence_matrix,
    existence_score,
    global_importance,
    keypoint_masks,
    location_scores,
    niche_impurity_score,
    oracle_impurity_score,
)
from bottlenecks.analysis.html_report import Section, build_report
from bottlenecks.analysis.information_plane import InformationPlane, plot_information_plane
from bottlenecks.analysis.intervention_curves import InterventionCurve, intervention_curve, plot_intervention_curves
from bottlenecks.analysis.interventions import InterventionResult, intervene, make_intervention
from bottlenecks.analysis.leakage import concept_leakage
from bottlenecks.analysis.model_access import bottleneck_of, check_concept_supervised, model_concept_names
from bottlenecks.analysis.policies import (
    POLICIES,
    CostAwarePolicy,
    ExpectedChangePolicy,
    InterventionGroups,
    InterventionPolicy,
    PolicyState,
    RandomPolicy,
    UncertaintyPolicy,
    make_groups,
    make_policy,
)
from bottlenecks.analysis.probes import linear_probe
from bottlenecks.analysis.report import PredictionWriter, RunReport
from bottlenecks.analysis.units import DeadUnitWarning, UnitReport, unit_report

__all__ = [
    "CUB_ATTRIBUTE_PARTS",
    "METHODS",
    "POLICIES",
    "ClassLogits",
    "Contributions",
    "CostAwarePolicy",
    "DeadUnitWarning",
    "ExpectedChangePolicy",
    "InformationPlane",
    "InterventionCurve",
    "InterventionGroups",
    "InterventionPolicy",
    "InterventionResult",
    "LocationScores",
    "PolicyState",
    "PredictionWriter",
    "RandomPolicy",
    "RunReport",
    "Section",
    "UncertaintyPolicy",
    "UnitActivations",
    "UnitReport",
    "attribute",
    "attribution_map",
    "bottleneck_of",
    "build_report",
    "causal_concept_effect",
    "check_concept_supervised",
    "code_label_counts",
    "code_purity",
    "completeness_score",
    "concept_activation_maps",
    "concept_alignment_score",
    "concept_leakage",
    "concept_location",
    "concept_part_masks",
    "concept_purity_matrix",
    "cooccurrence_matrix",
    "existence_score",
    "find_codes",
    "global_importance",
    "intervene",
    "intervention_curve",
    "keypoint_masks",
    "linear_probe",
    "location_scores",
    "make_groups",
    "make_intervention",
    "make_policy",
    "model_concept_names",
    "niche_impurity_score",
    "oracle_impurity_score",
    "plot_information_plane",
    "plot_intervention_curves",
    "spatial_layer",
    "unit_contributions",
    "unit_report",
]
