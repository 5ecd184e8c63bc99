"""The layout shows the pipeline: each DVC stage's code deps are exactly the import closure of the code it
runs, so a code change reruns every stage it can affect and no other."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from semrl.core import code
from semrl.core.code import semrl_imports


def flow_steps() -> dict[str, str]:
    """semrl.ops.flows.STEPS, read from the source: step name -> "module:function"."""
    tree = ast.parse((REPO / "semrl" / "ops" / "flows.py").read_text(encoding="utf-8"))
    [node] = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "STEPS"]
    return ast.literal_eval(node.value)


# `semrl flow` (stage train@<task>) runs each training step, a library function, in a process of its own
# (semrl.ops.steps).
SPAWNS = {"flow": [flow_steps()["train"].split(":")[0]]}


def closure(modules: set[str]) -> set[Path]:
    """The files those modules run, with the CLI module (the stage scripts run it; its own imports are taken
    per command: command_modules)."""
    return code.closure(modules, REPO, {REPO / "semrl" / "cli.py"})


def command_modules(command: str) -> set[str]:
    """What `semrl <command>` imports: the CLI module's top level, its callback, the command (and the modules
    of the steps its flow spawns)."""
    tree = ast.parse((REPO / "semrl" / "cli.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    commands = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    used = [commands[command], commands["_use_running_servers"]]
    return semrl_imports(top + used, REPO) | set(SPAWNS.get(command, []))


def stages() -> list[tuple[str, str, list[str]]]:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = []
    for name, stage in dvc.items():
        stage = stage.get("do", stage)
        script = re.search(r"python (stages/\w+\.py)", stage["cmd"]).group(1)
        command = re.search(r'app\(\["(\w+)"', (REPO / script).read_text(encoding="utf-8")).group(1)
        out.append((name, command, stage["deps"]))
    return out


@pytest.mark.parametrize("name, command, deps", stages(), ids=[s[0] for s in stages()])
def test_stage_code_deps_are_the_import_closure(name, command, deps):
    files = sorted(str(f.relative_to(REPO)) for f in closure(command_modules(command)))
    assert len(files) > 5
    listed = sorted(d for d in deps if d.startswith("semrl"))
    right = "\n".join(f"      - {f}" for f in files)
    assert not set(files) - set(listed), f"stage {name} runs code not among its deps; its code deps are:\n{right}"
    assert not set(listed) - set(files), f"stage {name} lists code it never runs; its code deps are:\n{right}"


def test_every_module_says_what_it_is_for():
    for path in sorted((REPO / "semrl").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 5, f"{path.relative_to(REPO)} has no first line saying what it is for"



def stage_names() -> set[str]:
    """Every stage name dvc.yaml defines, foreach stages expanded over their params list."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    names = set()
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        items = stage.get("foreach")
        if items is None:
            names.add(name)
            continue
        if isinstance(items, str):  # "${train.tasks}"
            node = params
            for key in items.strip("${}").split("."):
                node = node[key]
            items = node
        names |= {f"{name}@{item}" for item in items}
    return names


def test_the_lock_holds_only_stages_the_pipeline_defines():
    """DVC keeps a removed stage's entry in dvc.lock (it rewrites only the stages it runs): a stale entry
    names outputs no stage produces any more."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert set(lock) <= stage_names(), f"dvc.lock holds stages dvc.yaml lacks: {sorted(set(lock) - stage_names())}"


def test_an_operations_change_leaves_the_data_and_model_stages_up_to_date():
    """Flows, servers' liveness and deployments (semrl/ops) are not code the data and model stages run: a
    change there must not make fetch, prepare, base or embedder stale."""
    for name, command, _ in stages():
        if name in ("fetch", "prepare", "base", "embedder"):
            ops = sorted(str(f.relative_to(REPO)) for f in closure(command_modules(command)) if "ops" in f.parts)
            assert not ops, f"stage {name} runs operations code: {ops}"


def test_evaluation_never_imports_training():
    """One direction between the two: training scores with evaluation's metrics; evaluation reads what
    training wrote through the names in semrl.core.artifacts."""
    for path in sorted((REPO / "semrl" / "evaluation").glob("*.py")):
        found = {m for m in semrl_imports([ast.parse(path.read_text(encoding="utf-8"))]) if m.startswith("semrl.training")}
        assert not found, f"{path.relative_to(REPO)} imports {sorted(found)}"


def test_the_training_steps_import_no_prefect():
    """A training step runs where Prefect may not be installed (flow.step_python: an environment with the
    vllm extra, which cannot hold Prefect): no module it runs imports prefect when it loads. (Functions that
    set up flows — semrl.core.servers.use_prefect — import it inside; a step never calls them.)"""
    from semrl.ops.flows import STEPS

    def module_level(node):
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield child
                yield from module_level(child)

    modules = {"semrl.ops.steps", STEPS["train"].split(":")[0]}
    for path in sorted(code.closure(modules, REPO)):
        if path.suffix != ".py":
            continue
        nodes = list(module_level(ast.parse(path.read_text(encoding="utf-8"))))
        found = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names} | {
            n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in found if m.split(".")[0] == "prefect"}, f"{path.relative_to(REPO)} imports prefect"
