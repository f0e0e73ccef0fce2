"""`python -m ragqa_exp [group=option ...] [key=value ...] [-m]` — compose the config, then run the job.
`python -m ragqa_exp --validate [-m] ...` only composes and checks it (cli.validate_command)."""
import sys

import hydra

from ragqa_exp.cli import VALIDATE_FLAG, guarded, validate_command
from ragqa_exp.config import CONF_DIR
from ragqa_exp.config_store import register_configs
from ragqa_exp.job import run_job

register_configs()  # the quant schemas into Hydra's ConfigStore, before Hydra composes


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")  # = config_store.compose
def main(cfg) -> None:
    run_job(cfg)


if __name__ == "__main__":
    if VALIDATE_FLAG in sys.argv[1:]:
        guarded(lambda: validate_command(sys.argv[1:]))
    else:
        guarded(main)
