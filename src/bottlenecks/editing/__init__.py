"""Editing a trained model through its readable units: reversible, logged, evaluated edits.

* :mod:`~bottlenecks.editing.edits` — the edit kinds (plain data with ``apply`` / ``revert``)
  and the registry :data:`EDIT_KINDS` (a new kind is one class with :func:`register_edit`);
* :mod:`~bottlenecks.editing.repair` — training-free test-time repair on a shifted domain;
* :mod:`~bottlenecks.editing.log` — the model's edit log: undo, redo, list, diff, save/load;
* :mod:`~bottlenecks.editing.evaluate` — efficacy, locality, generalisation; one-by-one vs
  batched edits.

Example::

    from bottlenecks.editing import edit_log, evaluate_edits
    log = edit_log(model)                  # BottleneckModel: model.edits
    log.apply({"kind": "remove_concept", "units": ["striped_background"], "value": 0.5})
    log.undo()
    print(evaluate_edits(model, [{"kind": "intervene", "values": {"red": 1.0}}], source=(x, y)).table())
"""

from bottlenecks.editing.edits import (
    EDIT_KINDS,
    ConceptIntervention,
    Edit,
    EditRecord,
    ForceCodes,
    HeadWeight,
    RemoveUnit,
    ReplaceBank,
    RetrainValues,
    SetUnitValues,
    SuppressCodes,
    edit_from_dict,
    readout_of,
    register_edit,
    resolve_units,
)
from bottlenecks.editing.evaluate import (
    EditEvaluation,
    batching_table,
    compare_edit_batching,
    evaluate_edits,
    predict,
)
from bottlenecks.editing.log import DiffRow, EditLog, apply_edits, edit_log
from bottlenecks.editing.repair import TestTimeRepair

__all__ = [
    "EDIT_KINDS",
    "ConceptIntervention",
    "DiffRow",
    "Edit",
    "EditEvaluation",
    "EditLog",
    "EditRecord",
    "ForceCodes",
    "HeadWeight",
    "RemoveUnit",
    "ReplaceBank",
    "RetrainValues",
    "SetUnitValues",
    "SuppressCodes",
    "TestTimeRepair",
    "apply_edits",
    "batching_table",
    "compare_edit_batching",
    "edit_from_dict",
    "edit_log",
    "evaluate_edits",
    "predict",
    "readout_of",
    "register_edit",
    "resolve_units",
]
