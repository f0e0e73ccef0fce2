"""ragqa_exp.isolation: a stage runs in a fresh process; results, user errors, bugs and deaths come back."""
from __future__ import annotations

import os
import pytest

from ragqa_exp.errors import DataError, ResourceError
from ragqa_exp.isolation import StageBug, StageCrash, run_stage


def test_result_comes_back_from_another_process(tmp_path):
    assert run_stage("pid", os.getpid, work_dir=tmp_path) != os.getpid()
    assert run_stage("join", os.path.join, "a", "b", work_dir=tmp_path) == os.path.join("a", "b")
    assert not list((tmp_path / ".stages").iterdir())  # the exchange files are removed


def test_a_stage_process_runs_full_garbage_collections_less_often(tmp_path):
    """The stage process's collector makes a full pass every FULL_COLLECTION_EVERY young passes (its imports are
    long-lived objects), whatever the job process's setting (here CPython's default, kept: the control)."""
    import gc

    from ragqa_exp.isolation import FULL_COLLECTION_EVERY

    before = gc.get_threshold()  # conftest.py sets the test processes as the stages
    gc.set_threshold(700, 10, 10)
    try:
        assert run_stage("gc", gc.get_threshold, work_dir=tmp_path)[2] == FULL_COLLECTION_EVERY
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_user_error_is_raised_again_as_the_same_one_line_error(tmp_path):
    from ragqa_exp.data import read_jsonl

    with pytest.raises(Exception) as e:
        run_stage("read", read_jsonl, str(tmp_path / "missing.jsonl"), work_dir=tmp_path)
    assert type(e.value) is DataError and "file not found" in str(e.value) and "\n" not in str(e.value)


def test_bug_comes_back_with_the_child_traceback(tmp_path):
    with pytest.raises(StageBug) as e:
        run_stage("bug", int, "not a number", work_dir=tmp_path)
    assert "ValueError" in str(e.value) and "Traceback" in e.value.child_traceback


def test_killed_child_is_a_stage_crash_naming_the_signal(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGQA_KILL_STAGE", "doomed")
    with pytest.raises(StageCrash, match="killed by SIGKILL"):
        run_stage("doomed", os.getpid, work_dir=tmp_path)
    assert run_stage("other", os.getpid, work_dir=tmp_path) > 0  # only the named stage is killed
    monkeypatch.delenv("RAGQA_KILL_STAGE")
    with pytest.raises(StageCrash, match="SIGABRT"):
        run_stage("abort", os.abort, work_dir=tmp_path)


def test_cuda_oom_in_a_stage_is_the_one_line_resource_error(tmp_path, monkeypatch):
    import stage_faults

    tests_dir = os.path.dirname(stage_faults.__file__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    with pytest.raises(ResourceError, match="out of GPU memory: lower eval.batch_size"):
        run_stage("oom", stage_faults.raise_cuda_oom, work_dir=tmp_path)
