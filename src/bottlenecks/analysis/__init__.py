"""Analysis of trained bottleneck models: interventions and their policies and curves, concept
leakage, linear probes, code analysis, the information plane and the run report.

Every function here reaches a bottleneck only through its contract
(:mod:`bottlenecks.layers.base`): units, their activations, the declared hooks.
"""

from bottlenecks.analysis.codes import code_label_counts, code_purity, find_codes
from bottlenecks.analysis.information_plane import InformationPlane, plot_information_plane
from bottlenecks.analysis.intervention_curves import InterventionCurve, intervention_curve, plot_intervention_curves
from bottlenecks.analysis.interventions import InterventionResult, intervene, make_intervention
from bottlenecks.analysis.leakage import concept_leakage
from bottlenecks.analysis.model_access import bottleneck_of, check_concept_supervised, model_concept_names
from bottlenecks.analysis.policies import (
    POLICIES,
    ExpectedChangePolicy,
    InterventionPolicy,
    PolicyState,
    RandomPolicy,
    UncertaintyPolicy,
    make_policy,
)
from bottlenecks.analysis.probes import linear_probe
from bottlenecks.analysis.report import PredictionWriter, RunReport

__all__ = [
    "POLICIES",
    "ExpectedChangePolicy",
    "InformationPlane",
    "InterventionCurve",
    "InterventionPolicy",
    "InterventionResult",
    "PolicyState",
    "PredictionWriter",
    "RandomPolicy",
    "RunReport",
    "UncertaintyPolicy",
    "bottleneck_of",
    "check_concept_supervised",
    "code_label_counts",
    "code_purity",
    "concept_leakage",
    "find_codes",
    "intervene",
    "intervention_curve",
    "linear_probe",
    "make_intervention",
    "make_policy",
    "model_concept_names",
    "plot_information_plane",
    "plot_intervention_curves",
]
