"""The import graph of the whole package, read from the source (every import, function bodies included):
no cycles, and every import goes down the layering DESIGN.md declares (same layer or below). A new module
must be placed in a layer here. The dynamic imports of the registries (`quantize.methods()`,
`backends._discover()`, both driven by `config_store`) are not in the graph: the registries import none
of what fills them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ragqa_exp

PACKAGE = Path(ragqa_exp.__file__).parent

# Bottom to top, as in DESIGN.md "Modules". Names relative to ragqa_exp ("" is the package itself).
LAYERS: list[set[str]] = [
    # foundations: nothing of ragqa_exp, or only each other
    {"", "diskspace", "errors", "faults", "metrics", "measure", "checkpoints", "sparse_head", "nll", "stats",
     "sweep_dirs", "wandb_offline"},
    # files, cache, processes
    {"fsutil", "fingerprint", "manifest", "cache", "isolation"},
    # the typed config, the registries the implementations fill, the device/dtype policy
    {"config", "backends", "quantize.base", "runtime"},
    # data and what the job records
    {"data", "calib_data", "lora_targets", "random_model", "record", "tracking"},
    # models: the embedded package, the base model stage, loading; prompts fitted to a tokenizer; sources
    {"embedded", "base_model", "loading", "prompting", "backends.openai_api", "backends.graph_decode", "backends.prefill",
     "backends.elementwise", "backends.compiled_layers", "backends.exact_compile", "preflight"},
    # the quant methods
    {"quantize.none", "quantize.bnb", "quantize.gptq", "quantize.awq", "quantize._gptqmodel",
     "quantize._kernels", "quantize._awq_clip", "quantize._awq_torch", "quantize._gemma3_gptqmodel76"},
    # the stages
    {"train", "quantize", "backends.hf", "evaluate"},
    # the one shape of the stages (base model, train, quantize, evaluate)
    {"stages"},
    # the registration step (schemas into Hydra's ConfigStore, backend names into config)
    {"config_store"},
    # one job: the stages in order, then the record
    {"pipeline"},
    {"job"},
    # entry points
    {"cli", "__main__", "plots", "report", "report.__main__", "report.cli", "report.flat", "report.jobs",
     "report.markdown", "report.refs", "report.rows", "report.swept", "report.wandb_run"},
]


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name relative to the package ("" for the package, "quantize" for quantize/__init__.py) -> file."""
    found = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = f
    return found


def import_graph(files: dict[str, Path], top: str = "ragqa_exp") -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (relative imports resolved; `from
    pkg import name` is the submodule when `name` is one, else `pkg`)."""
    def known(name: str) -> str | None:
        while name not in files:
            if not name:
                return None
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                elif node.module == top or (node.module or "").startswith(top + "."):
                    base = node.module[len(top) + 1:]
                else:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.add(sub if sub in files else known(base))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == top or alias.name.startswith(top + "."):
                        targets.add(known(alias.name[len(top) + 1:]))
        graph[mod] = {t for t in targets if t is not None and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    level = {m: i for i, layer in enumerate(layers) for m in layer}
    return [f"{m or 'ragqa_exp'} (layer {level[m]}) imports {t} (layer {level[t]})"
            for m in sorted(graph) for t in sorted(graph[m]) if level[t] > level[m]]


GRAPH = import_graph(module_files())


def test_every_module_has_a_layer():
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(placed) == set(GRAPH), f"unplaced: {sorted(set(GRAPH) - set(placed))}, gone: {sorted(set(placed) - set(GRAPH))}"


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_every_import_goes_down_the_layers():
    assert upward_imports(GRAPH, LAYERS) == []


def test_the_checks_find_a_cycle_and_an_upward_import(tmp_path):
    """Negative control: a function-level import back up, in a package of three modules, is both."""
    pkg = tmp_path / "ragqa_exp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from ragqa_exp import high\n")
    (pkg / "mid.py").write_text("from . import low\n")
    (pkg / "high.py").write_text("from ragqa_exp.mid import x\n")
    graph = import_graph(module_files(pkg))
    assert graph == {"": set(), "low": {"high"}, "mid": {"low"}, "high": {"mid"}}
    assert cycles(graph) == [["high", "low", "mid"]]
    assert upward_imports(graph, [{""}, {"low"}, {"mid"}, {"high"}]) == ["low (layer 1) imports high (layer 3)"]


def test_errors_and_diskspace_import_nothing_above_them():
    assert GRAPH["diskspace"] == set()
    assert GRAPH["errors"] == {"diskspace"}
    assert "errors" in GRAPH["fsutil"]  # fsutil builds on errors, not the other way round


@pytest.mark.parametrize("module", ["config", "quantize.base", "backends"])
def test_the_registries_import_no_implementation(module):
    assert not any(t.startswith(("quantize", "backends.")) and t != "quantize.base" for t in GRAPH[module])
