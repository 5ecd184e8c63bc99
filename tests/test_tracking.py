"""semrl.core.tracking: which commit a run records."""
import subprocess

import pytest


def test_git_commit_is_dirty_for_edits_but_not_for_what_the_pipeline_writes(tmp_path, monkeypatch):
    """A clean clone's `dvc repro` rewrites dvc.lock and the git-tracked outputs it lists (reports/ with
    `cache: false`): the commit the runs record stays clean; an edit to anything else makes it dirty."""
    from semrl.core.tracking import git_commit

    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "alignment_tax.md").write_text("old\n")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  report:\n    cmd: python stages/report.py\n"
                                       "    outs:\n    - path: reports/alignment_tax.md\n      hash: md5\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = git("rev-parse", "HEAD").strip()
    monkeypatch.chdir(tmp_path / "reports")  # from a subfolder too: paths are the repository's
    assert git_commit() == sha
    (tmp_path / "reports" / "alignment_tax.md").write_text("new\n")
    (tmp_path / "dvc.lock").write_text((tmp_path / "dvc.lock").read_text() + "# rewritten by dvc\n")
    assert git_commit() == sha
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert git_commit() == sha + "-dirty"


@pytest.mark.parametrize("lock, expected", [("", ["dvc.lock"]), ("stages:\n  x:\n    outs: []\n", ["dvc.lock"]),
                                            ("not: [valid", [])])  # unreadable: nothing excused, dvc.lock included
def test_pipeline_outputs_of_an_empty_or_broken_lock(tmp_path, lock, expected):
    from semrl.core.tracking import pipeline_outputs

    (tmp_path / "dvc.lock").write_text(lock)
    assert pipeline_outputs(tmp_path) == expected
