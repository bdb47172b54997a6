"""The project's shape: the root holds the intended files, the reading path keeps its line budgets (printed with -s),
the experiments folder is never imported by the reading path.

    python -m pytest -q -s tests/test_layout.py
"""

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUDGETS = {"mora.py": 360, "model.py": 240, "train.py": 440, "memorize_uuid.py": 260, "README.md": 200}
ROOT = {"README.md", "mora.py", "model.py", "train.py", "memorize_uuid.py", "requirements.txt", "tests", "docs",
        "experiments", ".ci", ".gitignore", "pytest.ini"}


def test_the_reading_path_keeps_its_line_budgets():
    lines = {name: len((REPO / name).read_text().splitlines()) for name in BUDGETS}
    print("\nreading path, lines/budget: " + ", ".join(f"{n} {lines[n]}/{b}" for n, b in BUDGETS.items()))
    assert all(lines[name] <= budget for name, budget in BUDGETS.items()), lines
    assert sum(lines[name] for name in BUDGETS if name.endswith(".py")) <= 1300


def test_no_long_lines_and_no_long_functions():
    for path in [*REPO.glob("*.py"), *REPO.glob("experiments/*.py"), *REPO.glob("tests/*.py")]:
        text = path.read_text()
        assert all(len(line) <= 120 for line in text.splitlines()), path
        if path.parent == REPO:  # the reading path: a function reads in one screen
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef):
                    assert node.end_lineno - node.lineno < 60, (path.name, node.name)


def test_the_root_holds_the_intended_files():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode:
        pytest.skip("not a git checkout")
    assert {line.split("/")[0] for line in tracked.stdout.splitlines()} <= ROOT


def test_the_reading_path_never_imports_the_experiments():
    for name in ("mora.py", "model.py", "train.py", "memorize_uuid.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse((REPO / name).read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert "experiments" not in imported, name
