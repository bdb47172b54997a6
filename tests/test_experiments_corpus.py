"""experiments/corpus.py: the standard library as a corpus split by file, which train.py reads as a folder.

    python -m pytest -q tests/test_experiments_corpus.py
"""

import binascii
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import train
from experiments import corpus

ROOT = Path(__file__).resolve().parent.parent


def fake_library(root: Path) -> dict[str, str]:
    """A small library: files that count (by relative path), and others that must be left out."""
    kept = {f"pkg/mod{i}.py": f"def f{i}():\n    return {i}\n" for i in range(40)}
    kept.update({"top.py": "x = 'ü'\n", "a/b/c.py": "pass\n"})
    skipped = {"test/test_x.py": "assert 0\n", "pkg/tests/t.py": "", "idlelib/idle_test/t.py": "",
               "site-packages/torch/x.py": "", "pkg/__pycache__/m.py": "", "pkg/notes.txt": "not python\n"}
    for path, text in {**kept, **skipped}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    (root / "latin1.py").write_bytes("x = 'é'\n".encode("latin-1"))
    return kept


def test_split_by_file_of_the_files_that_count(tmp_path):
    kept = fake_library(tmp_path / "lib")
    manifest = corpus.build(str(tmp_path / "lib"), str(tmp_path / "out"))
    val = sorted(p for p in kept if binascii.crc32(p.encode()) % 10 == 0)  # an independent CRC-32
    train_files = sorted(p for p in kept if p not in val)
    assert manifest["files"] == {"train": train_files, "val": val} and val and train_files
    assert manifest["not_utf8"] == ["latin1.py"]
    for half, files in (("train", train_files), ("val", val)):  # each half: its files' texts, in path order
        text = (tmp_path / "out" / f"{half}.txt").read_text(encoding="utf-8")
        assert text == "\n\n".join(kept[p] for p in files)
    data = train.prepare(train.parse_args(["--data", str(tmp_path / "out"), "--block_size", "4"]))
    assert bytes(data["val"].tolist()).decode() == "\n\n".join(kept[p] for p in val)  # train.py reads that folder


def test_the_standard_library_splits_the_same_way_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = corpus.main([])  # the default folder names this Python's version
    assert first["out"] == f"out/data/stdlib-{platform.python_version()}".replace("/", os.sep)
    second = corpus.main(["--out", str(tmp_path / "b")])
    assert first["files"] == second["files"]
    assert not set(first["files"]["train"]) & set(first["files"]["val"])  # no file in both halves
    assert len(first["files"]["train"]) > 300 and 0.05 < first["bytes"]["val"] / first["bytes"]["train"] < 0.25
    assert not any("/test/" in f"/{p}" or p.startswith("site-packages/") for p in first["files"]["train"])
    for half in ("train", "val"):
        assert (tmp_path / first["out"] / f"{half}.txt").read_bytes() == (tmp_path / "b" / f"{half}.txt").read_bytes()
    assert json.loads((tmp_path / first["out"] / "files.json").read_text())["python"] == platform.python_version()


def test_a_missing_library_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.corpus", "--source", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"--source {tmp_path / 'none'}: no .py files there" in done.stderr and not (tmp_path / "out").exists()
