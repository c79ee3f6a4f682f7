"""``python -m bottlenecks.continual --config X.yaml``: a class-incremental comparison from YAML."""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ArgumentParser

from bottlenecks.continual.harness import run_experiment


def main(args: list[str] | None = None) -> None:
    """Parse the config, seed, then build the data and learners and run.

    The seed is set *before* the learners are built: their weights, random projections and
    codebooks are drawn when the config is instantiated, so seeding only inside
    :func:`run_experiment` would leave them to whatever the global generator held.
    """
    import lightning as L

    parser = ArgumentParser(prog="python -m bottlenecks.continual", description=run_experiment.__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run_experiment)
    cfg = parser.parse_args(args)
    L.seed_everything(cfg.seed, verbose=False)
    init = parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "__default_config__")}
    run_experiment(**kwargs)


if __name__ == "__main__":
    main()
