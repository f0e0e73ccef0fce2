"""Turn user errors (bad override, unknown option, missing file, no GPU, OOM) into one line + exit 2."""
from __future__ import annotations

import os
import sys
from typing import Callable

from ragqa_exp.errors import RagqaError
from ragqa_exp.job import FAILED, one_line


def _is_user_error(ex: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(ex, (RagqaError, HydraException, OmegaConfBaseException))


def guarded(main: Callable[[], None]) -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let Hydra raise; we print the short form ourselves
    try:
        main()
    except Exception as ex:
        if not _is_user_error(ex):
            raise
        print(f"error: {one_line(ex)}", file=sys.stderr)
        sys.exit(2)
    if len(FAILED) == 1 and not FAILED[0][0]:
        print(f"error: {FAILED[0][1]}", file=sys.stderr)
        sys.exit(2)
    if FAILED:
        print(f"error: {len(FAILED)} sweep job(s) failed:", file=sys.stderr)
        for job_dir, msg in FAILED:
            print(f"  {job_dir}: {msg}", file=sys.stderr)
        sys.exit(1)
