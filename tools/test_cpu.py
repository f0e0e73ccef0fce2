"""Where the test suite's CPU goes: `python tools/test_cpu.py <RAGQA_TEST_CPU_LOG file> [N]` prints the total
CPU and wall seconds per xdist worker and the N tests (default 25) that cost the most CPU (tests/conftest.py
writes the file when RAGQA_TEST_CPU_LOG is set)."""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str, top: int = 25) -> None:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    per_worker: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        per_worker[r["worker"]][0] += r["cpu_s"]
        per_worker[r["worker"]][1] += r["wall_s"]
    print(f"{len(rows)} tests, {sum(r['cpu_s'] for r in rows):.0f} CPU s in all")
    for worker, (cpu, wall) in sorted(per_worker.items()):
        print(f"  {worker}: {cpu:.0f} CPU s over {wall:.0f} s of its tests")
    print(f"the {top} that cost the most CPU (seconds: CPU, wall):")
    for r in sorted(rows, key=lambda r: -r["cpu_s"])[:top]:
        print(f"  {r['cpu_s']:8.1f} {r['wall_s']:8.1f}  {r['test']}  [{r['worker']}]")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
