"""`python -m ragqa_exp [group=option ...] [key=value ...] [-m]` — compose the config, then run the job."""
from pathlib import Path

import hydra

from ragqa_exp import config  # noqa: F401  (registers the typed schema in Hydra's ConfigStore)
from ragqa_exp.cli import guarded
from ragqa_exp.job import run_job


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="config")
def main(cfg) -> None:
    run_job(cfg)


if __name__ == "__main__":
    guarded(main)
