"""``bottlenecks edit CHECKPOINT EDITS.yaml``: apply an edit file to a checkpoint.

Writes a new checkpoint (with its edit log) next to the original — never over it — and a
JSON summary (edits, diff, evaluation) beside it, and prints the evaluation table.

The edit file::

    edits:                                # applied in order, all or nothing
      - kind: remove_concept
        units: [striped_background]
        value: 0.5
      - kind: repair
        x: shifted_support.npz:x          # arrays: FILE.npy or FILE.npz:KEY (relative to this file)
        y: shifted_support.npz:y
      - kind: replace_bank                # files the edit reads itself (bank, data): relative to this file
        mode: extend
        bank: more_concepts.safetensors
        data: head_train.npz              # arrays x and y
    evaluate:                             # optional: .npz files with arrays x and y
      source: source_test.npz
      target: shifted_test.npz
      edited: fixes.npz                   # the examples the edits target, with wanted labels
    output: edited.ckpt                   # optional; default CHECKPOINT-STEM.edited.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

_ARRAY = re.compile(r"^(?P<file>.+\.(?:npy|npz))(?::(?P<key>[\w\-]+))?$")
_PLAIN_FIELDS = ("kind", "op", "units")
#: fields that name a file the edit reads itself (replace_bank's bank and data): paths, made relative to the edit file
_FILE_FIELDS = ("bank", "data")


def load_array(spec: str, base: Path) -> torch.Tensor:
    """``FILE.npy`` or ``FILE.npz:KEY`` (relative to ``base``) as a tensor; no pickles."""
    m = _ARRAY.match(spec)
    if m is None:
        raise ValueError(f"an array is given as FILE.npy or FILE.npz:KEY, got {spec!r}")
    path = (base / m["file"]).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"array file {str(path)!r} (from {spec!r}) does not exist")
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        return torch.as_tensor(data)
    key = m["key"]
    if key is None or key not in data.files:
        raise ValueError(f"{spec!r}: name one of the arrays in {path.name}: {data.files}")
    return torch.as_tensor(data[key])


def _resolve_arrays(spec: Any, base: Path) -> Any:
    if not isinstance(spec, dict):
        return spec
    out = {}
    for k, v in spec.items():
        if isinstance(v, str) and k in _FILE_FIELDS:
            out[k] = str(base / v) if not Path(v).is_absolute() else v
        elif isinstance(v, str) and k not in _PLAIN_FIELDS and _ARRAY.match(v):
            out[k] = load_array(v, base)
        else:
            out[k] = v
    return out


def _split(spec: Any, base: Path, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ValueError(f"evaluate.{name} must be the path of an .npz file with arrays x and y, got {spec!r}")
    path = (base / spec).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.{name}: {str(path)!r} does not exist")
    data = np.load(path, allow_pickle=False)
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk in data.files and yk in data.files:
            return torch.as_tensor(data[xk]).float(), torch.as_tensor(data[yk])
    raise ValueError(f"evaluate.{name}: {path.name} needs arrays x and y (or x_test and y_test), has {data.files}")


def read_edit_file(path: str | Path) -> dict[str, Any]:
    """The edit file as ``{"edits": [...], "evaluate": {...}, "output": ...}`` with arrays loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit file {str(path)!r} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"edit file {path.name} is not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(doc, list):
        doc = {"edits": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("edits"), list) or not doc["edits"]:
        raise ValueError(f"edit file {path.name} needs a non-empty list under 'edits' (or be such a list)")
    unknown = sorted(set(doc) - {"edits", "evaluate", "output"})
    if unknown:
        raise ValueError(f"edit file {path.name} has unknown sections {unknown}; known: edits, evaluate, output")
    base = path.parent
    doc["edits"] = [_resolve_arrays(e, base) for e in doc["edits"]]
    ev = doc.get("evaluate") or {}
    if not isinstance(ev, dict) or set(ev) - {"source", "target", "edited"}:
        raise ValueError("the 'evaluate' section takes source, target and edited (.npz paths)")
    doc["evaluate"] = {k: _split(ev.get(k), base, k) for k in ("source", "target", "edited")}
    return doc


def output_path(checkpoint: Path, wanted: str | None) -> Path:
    """Where the edited checkpoint goes: never the original, never an existing file."""
    if wanted is not None:
        out = (checkpoint.parent / wanted) if not Path(wanted).is_absolute() else Path(wanted)
        if out.resolve() == checkpoint.resolve():
            raise ValueError("the output would overwrite the original checkpoint; choose another name")
        if out.exists():
            raise FileExistsError(f"{str(out)!r} exists; bottlenecks edit never overwrites a file")
        return out
    stem = checkpoint.name[: -len(".ckpt")] if checkpoint.name.endswith(".ckpt") else checkpoint.name
    for i in range(1000):
        out = checkpoint.with_name(f"{stem}.edited{'' if i == 0 else f'-{i}'}.ckpt")
        if not out.exists():
            return out
    raise FileExistsError(f"too many edited copies of {checkpoint.name} already exist")


def edit_checkpoint(checkpoint: str | Path, edit_file: str | Path, output: str | None = None) -> tuple[Path, str]:
    """Apply an edit file to a checkpoint; return the new checkpoint's path and the report text."""
    from bottlenecks.editing.evaluate import evaluate_edits
    from bottlenecks.models.module import BottleneckModel

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    doc = read_edit_file(edit_file)
    out = output_path(checkpoint, output if output is not None else doc.get("output"))
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = BottleneckModel.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    model.eval()
    ev = doc["evaluate"]
    report = ""
    if ev["source"] is not None:
        evaluation = evaluate_edits(model, doc["edits"], ev["source"], ev["target"], ev["edited"], keep=True)
        report = evaluation.table()
    else:
        model.edits.apply_all(doc["edits"])
        evaluation = None
    raw["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.on_save_checkpoint(raw)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(raw, tmp)
    os.replace(tmp, out)
    summary = {
        "checkpoint": str(out),
        "source_checkpoint": str(checkpoint),
        "edits": model.edits.list(),
        "diff": [vars(r) for r in model.edits.diff()],
        "evaluation": None if evaluation is None else evaluation.to_dict(),
    }
    summary_path = out.with_name(out.name[: -len(".ckpt")] + ".edits.json" if out.name.endswith(".ckpt") else out.name + ".edits.json")
    if not summary_path.exists():
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
    text = f"wrote {out}\n{model.edits.table()}\n{model.edits.diff_table()}"
    if report:
        text += f"\n\n{report}"
    return out, text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bottlenecks edit",
        description="Apply an edit file to a checkpoint; write the edited checkpoint next to it.",
    )
    parser.add_argument("checkpoint", help="the checkpoint to edit (left untouched)")
    parser.add_argument("edits", help="the edit file (YAML)")
    parser.add_argument("--output", default=None, help="name of the new checkpoint (default STEM.edited.ckpt)")
    args = parser.parse_args(argv)
    _, text = edit_checkpoint(args.checkpoint, args.edits, args.output)
    print(text)
