"""Turn user errors (bad override or value, unknown option, missing file, no GPU, OOM) into one line + exit 2."""
from __future__ import annotations

import os
import sys
from typing import Callable

from ragqa_exp.errors import RagqaError, one_line
from ragqa_exp.isolation import StageBug
from ragqa_exp.job import FAILED, JobStopped


def _is_user_error(ex: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(ex, (RagqaError, HydraException, OmegaConfBaseException))


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
    except StageBug as ex:  # a bug inside a stage process: its traceback, then the one-line summary
        print(ex.child_traceback, file=sys.stderr)
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(1)
    except Exception as ex:
        if not _is_user_error(ex):
            raise
        print(f"error: {one_line(ex)}", file=sys.stderr)
        sys.exit(2)
    if len(FAILED) == 1 and not FAILED[0][0]:  # a single run: bad input exits 2, a crashed stage 1
        print(f"error: {FAILED[0][1]}", file=sys.stderr)
        sys.exit(2 if FAILED[0][2] else 1)
    if FAILED:
        print(f"error: {len(FAILED)} sweep job(s) failed:", file=sys.stderr)
        for job_dir, msg, _ in FAILED:
            print(f"  {job_dir}: {msg}", file=sys.stderr)
        sys.exit(1)
