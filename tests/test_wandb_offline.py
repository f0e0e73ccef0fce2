"""ragqa_exp.wandb_offline against real offline runs written by the installed wandb."""
from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from ragqa_exp.wandb_offline import (  # noqa: E402
    BLOCK_SIZE,
    FIRST,
    FULL,
    LAST,
    MIDDLE,
    _chunks,
    find_run_dirs,
    read_records,
    read_run,
)

LOSSES = [2.5, 1.25, 0.75, 0.5]
ROWS = [["q1", "東京"], ["q2", None], ["q3", "42"]]
N_BIG_STEPS = 400
BLOB = "x" * (3 * BLOCK_SIZE + 1234)  # one history record spanning 4+ blocks


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """Env under which wandb stays offline, quiet and inside tmp."""
    home = tmp_path_factory.mktemp("wandb_home")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.delenv("WANDB_RUN_ID", raising=False)
        yield


def _init(root: Path, **kw):
    settings = wandb.Settings(
        mode="offline", x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
        disable_git=True, save_code=False, console="off", silent=True,
    )
    return wandb.init(project="t", dir=str(root), settings=settings, **kw)


@pytest.fixture(scope="module")
def small_run(wandb_env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    run = _init(root, config={"a": 1, "nested": {"b": 2}})
    for i, x in enumerate(LOSSES):
        run.log({"train/loss": x, "train/global_step": i})
    run.log({"mismatches": wandb.Table(columns=["qid", "pred"], data=ROWS)})
    run.summary["exact_match"] = 0.5
    wandb.finish()
    (run_dir,) = find_run_dirs(root)
    return run_dir


@pytest.fixture(scope="module")
def big_run(wandb_env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    run = _init(root, config={"lr": 1e-4})
    for i in range(N_BIG_STEPS):
        run.log({"train/loss": 1.0 / (i + 1), "note": f"step-{i:05d}-" + "y" * 100})
    run.log({"blob": BLOB})
    run.log({"train/loss": -1.0})
    wandb.finish(exit_code=3)
    (run_dir,) = find_run_dirs(root)
    return run_dir


def _wandb_file(run_dir: Path) -> Path:
    (f,) = run_dir.glob("run-*.wandb")
    return f


def _truncated(src: Path, n: int, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def test_find_run_dirs(small_run: Path, tmp_path: Path) -> None:
    assert re.fullmatch(r"offline-run-\d{8}_\d{6}-[a-z0-9]+", small_run.name), small_run.name
    assert find_run_dirs(small_run.parent.parent) == [small_run]  # <dir>/wandb/offline-run-*
    assert find_run_dirs(small_run) == [small_run]
    assert find_run_dirs(tmp_path) == []


def test_header_layout(small_run: Path) -> None:
    head = _wandb_file(small_run).read_bytes()[:7]
    assert struct.unpack("<4sHB", head) == (b":W&B", 0xBEE1, 0)


def test_read_run_small(small_run: Path) -> None:
    run = read_run(small_run, check_crc=True)
    assert run.run_id == small_run.name.rsplit("-", 1)[1]
    assert run.config == {"a": 1, "nested": {"b": 2}}
    metric_rows = [h for h in run.history if "train/loss" in h]
    assert [h["train/loss"] for h in metric_rows] == LOSSES
    assert [h["train/global_step"] for h in metric_rows] == list(range(len(LOSSES)))
    assert [h["_step"] for h in run.history] == list(range(len(LOSSES) + 1))
    assert run.history[-1]["mismatches/_type"] == "table-file"
    assert run.summary["exact_match"] == 0.5
    assert run.summary["train/loss"] == LOSSES[-1]
    assert run.tables["mismatches"]["columns"] == ["qid", "pred"]
    assert run.tables["mismatches"]["data"] == ROWS
    assert run.exit_code == 0


def test_big_run_crosses_blocks(big_run: Path) -> None:
    wf = _wandb_file(big_run)
    assert wf.stat().st_size > 4 * BLOCK_SIZE
    with open(wf, "rb") as f:
        types = [t for t, _ in _chunks(f, check_crc=True)]
    assert {FULL, FIRST, MIDDLE, LAST} <= set(types)
    run = read_run(big_run, check_crc=True)
    assert run.config == {"lr": 1e-4}
    losses = [h["train/loss"] for h in run.history if "train/loss" in h]
    assert losses == [1.0 / (i + 1) for i in range(N_BIG_STEPS)] + [-1.0]
    notes = [h["note"] for h in run.history if "note" in h]
    assert notes == [f"step-{i:05d}-" + "y" * 100 for i in range(N_BIG_STEPS)]
    (blob_row,) = [h for h in run.history if "blob" in h]
    assert blob_row["blob"] == BLOB and blob_row["_step"] == N_BIG_STEPS
    assert [h["_step"] for h in run.history] == list(range(N_BIG_STEPS + 2))
    assert run.summary["train/loss"] == -1.0
    assert run.exit_code == 3


def _chunk_ends(data: bytes) -> list[int]:
    """Independent oracle for a file that fits in one block: end offset of every chunk."""
    assert len(data) < BLOCK_SIZE
    pos, ends = 7, []
    while pos < len(data):
        (length,) = struct.unpack_from("<H", data, pos + 4)
        assert data[pos + 6] == FULL
        pos += 7 + length
        ends.append(pos)
    assert pos == len(data)
    return ends


def test_truncated_small_file(small_run: Path, tmp_path: Path) -> None:
    wf = _wandb_file(small_run)
    full = list(read_records(wf))
    ends = _chunk_ends(wf.read_bytes())
    assert len(ends) == len(full)
    assert list(read_records(_truncated(wf, 3, tmp_path))) == []  # cut inside the file header
    assert list(read_records(_truncated(wf, 7, tmp_path))) == []
    for k in range(len(full)):
        for cut, n_expected in [(ends[k] - 1, k), (ends[k], k + 1), (ends[k] + 3, k + 1)]:
            got = list(read_records(_truncated(wf, cut, tmp_path), check_crc=True))
            assert got == full[:n_expected], (k, cut)


def test_truncated_big_file(big_run: Path, tmp_path: Path) -> None:
    wf = _wandb_file(big_run)
    data = wf.read_bytes()
    full = list(read_records(wf))
    # the first record holding the blob (wandb-core writes a summary record, then history)
    blob_at = data.find(b"x" * 1000)
    blob_idx = next(i for i, r in enumerate(full) if b"x" * 1000 in r.SerializeToString())
    assert full[blob_idx].WhichOneof("record_type") in ("summary", "history")
    # cut inside the multi-block blob record: everything before it survives, it does not
    for cut in (blob_at + 10, blob_at + BLOCK_SIZE, blob_at + 2 * BLOCK_SIZE + 7):
        assert list(read_records(_truncated(wf, cut, tmp_path))) == full[:blob_idx]
    # arbitrary cuts, including right at and around block boundaries, always give a prefix
    prev = 0
    cuts = sorted({*range(0, len(data), 2999), *(b * BLOCK_SIZE + d for b in range(1, len(data) // BLOCK_SIZE + 1)
                                                 for d in (-8, -7, -1, 0, 1, 6, 7, 8))})
    for cut in cuts:
        got = list(read_records(_truncated(wf, cut, tmp_path), check_crc=True))
        assert got == full[: len(got)] and len(got) >= prev, cut
        prev = len(got)
    # a crashed run: no exit record, but the history up to the cut is there
    crashed = tmp_path / big_run.name
    shutil.copytree(big_run, crashed)
    _truncated(wf, blob_at + 10, crashed)
    run = read_run(crashed)
    assert run.exit_code is None
    assert len(run.history) == N_BIG_STEPS and "blob" not in run.history[-1]


def test_not_a_wandb_file(tmp_path: Path) -> None:
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"garbage-garbage")
    with pytest.raises(ValueError):
        list(read_records(bad))
