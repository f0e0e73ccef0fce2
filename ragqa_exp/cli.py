"""Turn user errors (bad override or value, unknown option, missing file, no GPU, OOM) into one line + exit 2;
`--validate`: check a command's config without running it."""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from ragqa_exp.errors import RagqaError, UserAbort, one_line
from ragqa_exp.isolation import StageBug
from ragqa_exp.job import FAILED, JobStopped


def is_user_error(ex: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(ex, (RagqaError, HydraException, OmegaConfBaseException))


VALIDATE_FLAG = "--validate"
MULTIRUN_FLAGS = ("-m", "--multirun")


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job `-m` launches for `overrides` (Hydra's basic sweeper expands them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    # like BasicSweeper.launch: a preset's `hydra.sweeper.params` first, the command line's overrides win
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    parsed = parser.parse_overrides([*preset_sweep_params(fixed), *overrides])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preset_sweep_params(overrides: Sequence[str]) -> list[str]:
    """`key=values` of the composed config's `hydra.sweeper.params` (set by presets such as
    experiment=quant_comparison), as Hydra's basic sweeper adds them before the command line's overrides."""
    from ragqa_exp.config_store import compose

    params = compose(overrides, with_hydra=True).hydra.sweeper.params or {}
    return [f"{k}={v}" for k, v in params.items()]


def validate_command(args: Sequence[str]) -> None:
    """`python -m ragqa_exp --validate [-m] OVERRIDES`: compose and check the config of the run (or of every
    job of the sweep) exactly as a job starts, loading and writing nothing. Prints `ok: ...` and returns, or
    one `error: ...` line per bad job and exits 2. Sources (model, cache dir) are checked when a job starts."""
    from ragqa_exp.config_store import validate_overrides

    multirun = any(a in MULTIRUN_FLAGS for a in args)
    overrides = [a for a in args if a != VALIDATE_FLAG and a not in MULTIRUN_FLAGS]
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise RagqaError(f"{VALIDATE_FLAG} takes overrides and -m only, not {' '.join(flags)}")
    if not multirun:
        validate_overrides(overrides)
        print("ok: the config is valid")
        return
    jobs = sweep_jobs(overrides)
    bad = []
    for num, job in enumerate(jobs):
        try:
            validate_overrides(job)
        except Exception as ex:
            if not is_user_error(ex):
                raise
            bad.append(f"error: job {num} ({','.join(job) or 'defaults'}): {one_line(ex)}")
    if bad:
        print("\n".join(bad), file=sys.stderr)
        sys.exit(2)
    print(f"ok: all {len(jobs)} job(s) of the sweep are valid")


def guarded(main: Callable[[], None]) -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let Hydra raise; we print the short form ourselves
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # NVML and torch agree on device indices
    try:
        main()
    except JobStopped as ex:  # SIGTERM: the stage stopped (training saved a checkpoint); so did the sweep
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(128 + ex.signum)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except UserAbort as ex:  # raised where Hydra would have swallowed the error (a callback)
        print(f"error: {one_line(ex.error)}", file=sys.stderr)
        sys.exit(2)
    except StageBug as ex:  # a bug inside a stage process: its traceback, then the one-line summary
        print(ex.child_traceback, file=sys.stderr)
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(1)
    except Exception as ex:
        if not is_user_error(ex):
            raise
        print(f"error: {one_line(ex)}", file=sys.stderr)
        sys.exit(2)
    if len(FAILED) == 1 and not FAILED[0].job_dir:  # a single run: bad input exits 2, a crashed stage 1
        print(f"error: {FAILED[0].message}", file=sys.stderr)
        sys.exit(2 if FAILED[0].user_error else 1)
    if FAILED:
        print(f"error: {len(FAILED)} sweep job(s) failed:", file=sys.stderr)
        for failure in FAILED:
            print(f"  {failure.job_dir}: {failure.message}", file=sys.stderr)
        sys.exit(1)
