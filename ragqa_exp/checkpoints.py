"""Resumable training: transformers Trainer checkpoints (adapter, optimizer, scheduler, RNG, trainer state)
in the train entry's build dir, found again after a kill, and a clean stop on SIGTERM / SIGINT.

- `last_checkpoint(dir)`: the newest complete `checkpoint-<step>` (transformers writes trainer_state.json
  last; a checkpoint without it was being written when the process died, and is removed).
- `StopAndSave`: a TrainerCallback for the train stage process. SIGTERM (SLURM preemption; the job process
  forwards the one it gets) or SIGINT only sets a flag; at the end of the current step the trainer saves a
  checkpoint and stops, and `exit_if_stopped()` ends the process by that signal. If the job process is gone,
  the entry's lock went with it, so the stage exits at once without touching the entry. With checkpoints on,
  it also saves at the last step, so a kill while merging costs the merge, not the training.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, written last into a checkpoint
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def last_checkpoint(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint in `folder`; newer incomplete ones are removed."""
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
    found = sorted((p for p in folder.iterdir() if p.is_dir() and pattern.fullmatch(p.name)),
                   key=checkpoint_step, reverse=True)
    for path in found:
        if (path / STATE_FILE).is_file():
            return path
        log.warning("train: removing incomplete checkpoint %s (its process died while writing it)", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


class StopAndSave(TrainerCallback):
    """Checkpoint and stop at the end of the step in which SIGTERM or SIGINT arrived (see module doc)."""

    def __init__(self, save_at_end: bool) -> None:
        self.save_at_end = save_at_end
        self.signum: Optional[int] = None
        self.parent = os.getppid()
        self.previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def _on_signal(self, signum, frame) -> None:
        if os.getppid() != self.parent:  # the job process died, and its lock on the cache entry with it
            os._exit(128 + signum)
        self.signum = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            log.warning("train: %s received: saving a checkpoint at step %d, then stopping",
                        signal.Signals(self.signum).name, state.global_step)
            control.should_save = True
            control.should_training_stop = True
        elif self.save_at_end and state.global_step >= state.max_steps:
            control.should_save = True
        return control

    def exit_if_stopped(self, folder: Path) -> None:
        """After training: end this process by the stop signal, if one came; else restore the handlers (a
        signal from now on ends the process at once; the checkpoints stay for the next run)."""
        for s, handler in self.previous.items():
            signal.signal(s, handler if self.signum is None else signal.SIG_DFL)
        if self.signum is None:
            return
        log.warning("train: stopped by %s; checkpoint %s saved; run the same command again to resume from it",
                    signal.Signals(self.signum).name, last_checkpoint(folder))
        logging.shutdown()
        os.kill(os.getpid(), self.signum)
        signal.pause()  # the signal ends the process
