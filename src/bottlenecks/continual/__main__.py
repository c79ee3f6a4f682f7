"""``python -m bottlenecks.continual --config X.yaml``: a class-incremental comparison from YAML."""

from jsonargparse import CLI

from bottlenecks.continual.harness import run_experiment


def main(args: list[str] | None = None) -> None:
    CLI(run_experiment, args=args)


if __name__ == "__main__":
    main()
