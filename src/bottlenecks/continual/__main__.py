"""``python -m bottlenecks.continual --config X.yaml``: a class-incremental comparison from YAML.

As with ``bottlenecks fit``, the data's sizes reach every learner that takes them, so a
config never repeats them: ``in_features`` / ``feature_dim`` (the feature width),
``num_classes`` and ``concept_names`` are filled in wherever a learner, model or bottleneck
accepts them and the config leaves them out.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from bottlenecks.continual.harness import run_experiment
from bottlenecks.naming import accepted_options, upgrade_config


def fill_links(node: Any, values: dict[str, Any]) -> Any:
    """Set each of ``values`` in every ``class_path`` node whose class accepts it and whose
    ``init_args`` leave it out (in place)."""
    if isinstance(node, dict):
        path = node.get("class_path")
        if isinstance(path, str):
            init_args = node.setdefault("init_args", {})
            for key, value in values.items():
                if key in (accepted_options(path) or ()) and key not in init_args and value is not None:
                    init_args[key] = value
        for value in node.values():
            fill_links(value, values)
    elif isinstance(node, list):
        for value in node:
            fill_links(value, values)
    return node


def _data_values(data_node: Any) -> dict[str, Any]:
    from jsonargparse import ArgumentParser

    from bottlenecks.data.datamodule import FeatureDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(FeatureDataModule, "data", fail_untyped=False)
    dm = parser.instantiate_classes(parser.parse_object({"data": data_node})).data
    return {
        "in_features": dm.feature_dim,
        "feature_dim": dm.feature_dim,
        "num_classes": dm.num_classes,
        "concept_names": dm.concept_names,
    }


def link_config_args(args: list[str]) -> list[str]:
    """``--config FILE`` with the data's sizes filled into the learners (and old option names
    upgraded); the file itself is left untouched."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg != "--config" or not Path(out[i + 1]).is_file():
            continue
        config = yaml.safe_load(Path(out[i + 1]).read_text())
        if not isinstance(config, dict) or "data" not in config or "learners" not in config:
            continue
        linked = upgrade_config(copy.deepcopy(config))
        fill_links(linked["learners"], _data_values(linked["data"]))
        out[i + 1] = yaml.safe_dump(linked, sort_keys=False)
    return out


def main(args: list[str] | None = None) -> None:
    """Parse the config (with the data's sizes linked in), seed, then build the data and
    learners and run.

    The seed is set *before* the learners are built: their weights, random projections and
    codebooks are drawn when the config is instantiated, so seeding only inside
    :func:`run_experiment` would leave them to whatever the global generator held.
    """
    import sys

    import lightning as L

    parser = ArgumentParser(prog="python -m bottlenecks.continual", description=run_experiment.__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run_experiment)
    cfg = parser.parse_args(link_config_args(sys.argv[1:] if args is None else args))
    L.seed_everything(cfg.seed, verbose=False)
    init = parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "__default_config__")}
    run_experiment(**kwargs)


if __name__ == "__main__":
    main()
