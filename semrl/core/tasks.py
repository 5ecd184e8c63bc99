"""Task records: what each task reads, how its prompt is built, which script its output is in and which
metrics score it. Resolved once from the `tasks` section of params.yaml; training, evaluation, the report
and `semrl check` all read these records instead of knowing tasks by name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semrl import SemrlError
from semrl.core.config import Config
from semrl.core.io import read_jsonl

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Task:
    name: str
    data_dir: Path  # prepared/<data>: {train,dev,test}.jsonl
    input: str  # field of a record that is the model's input
    output: str  # field that is the reference
    script: str  # script the output must be in ("bo", "zh")
    prompt: str  # template with {input}
    metrics: tuple[str, ...]
    primary_metric: str

    def split_file(self, split: str) -> Path:
        return self.data_dir / f"{split}.jsonl"

    def examples(self, split: str, tokenizer, max_input_tokens: int) -> list[dict[str, str]]:
        """{id, prompt, input, reference, source, synthetic} per record of a split; the input is cut to `max_input_tokens`
        tokens (prompts are ours to truncate: TRL no longer does). `source` names the corpus (e.g. lotsawa,
        cldr_dates), so that real and synthetic test items are scored apart."""
        path = self.split_file(split)
        if not path.is_file():
            raise SemrlError(f"{path}: missing (run `dvc repro prepare`)")
        rows = []
        for r in read_jsonl(path):
            text = truncate(tokenizer, r[self.input], max_input_tokens)
            rows.append({"id": r["id"], "prompt": self.prompt.format(input=text), "input": text,
                         "reference": r[self.output], "source": r.get("source", self.name),
                         "synthetic": bool(r.get("synthetic", False))})
        return rows


def per_source(rows: list[dict], n: int) -> list[dict]:
    """The first n rows of each data source, in split order: real and synthetic sources each get their
    share, so neither crowds the other out of a sample."""
    taken: dict[str, int] = {}
    out = []
    for x in rows:
        if taken.setdefault(x["source"], 0) < n:
            taken[x["source"]] += 1
            out.append(x)
    return out


def truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def tasks(cfg: Config) -> dict[str, Task]:
    return {name: Task(name, cfg.prepare.out_dir / t.data, t.input, t.output, t.script, t.prompt, tuple(t.metrics),
                       t.primary_metric) for name, t in cfg.tasks.items()}


def get_task(cfg: Config, name: str) -> Task:
    known = tasks(cfg)
    if name not in known:
        raise SemrlError(f"unknown task {name!r} (defined in params `tasks`: {', '.join(known)})")
    return known[name]


def split_sizes(cfg: Config, task_name: str) -> dict[str, int] | None:
    """Rows per split of a task's prepared data, or None before `prepare` wrote it."""
    task = get_task(cfg, task_name)
    if not task.split_file("train").is_file():
        return None
    sizes = {}
    for split in ("train", "dev", "test"):
        path = task.split_file(split)
        sizes[split] = sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0
    return sizes


def data_problems(cfg: Config, task_names: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Each task's prepared splits against what training needs: the cold start's samples plus
    check.min_branch_examples for the branches, and non-empty dev and test splits. (problems, facts);
    a task not prepared yet is a fact (the training flow checks again before its first step)."""
    problems, facts = [], []
    t = cfg.train
    need = t.coldstart.samples + cfg.check.min_branch_examples
    for name in task_names or t.tasks:
        sizes = split_sizes(cfg, name)
        if sizes is None:
            facts.append(f"data {name}: not prepared yet (checked again when training starts)")
            continue
        facts.append(f"data {name}: train {sizes['train']:,}, dev {sizes['dev']:,}, test {sizes['test']:,}")
        if sizes["train"] < need:
            problems.append(
                f"task {name}: the train split has {sizes['train']:,} rows, fewer than train.coldstart.samples "
                f"{t.coldstart.samples:,} + check.min_branch_examples {cfg.check.min_branch_examples:,} = {need:,}: "
                f"add a corpus (fetch.tables; configs/paper.yaml shows an MT slot) or lower coldstart.samples")
        for split in ("dev", "test"):
            if not sizes[split]:
                problems.append(f"task {name}: the {split} split is empty")
    return problems, facts
