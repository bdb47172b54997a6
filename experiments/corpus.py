"""
A second domain, already on every machine with Python: the standard library's own source code, as a folder that
train.py's --data reads (train.txt, val.txt), split by file. Nothing downloads; the bundled prose (--data pydoc) is
the first domain.

    python -m experiments.corpus                      # out/data/stdlib-<python version>/, about 12 MB, seconds
    python train.py --method full --data out/data/stdlib-3.11.7 --max_iters 100    # the folder it printed
    python -m experiments.corpus --source /path/to/Lib --out out/data/my-lib      # another library of .py files

The files: every .py file under the library (sysconfig's "stdlib" path), less its test suites (folders named test,
tests, idle_test) and what is installed into it (site-packages, dist-packages), in sorted path order (the same on
every machine). A file is held out, into val.txt, when the CRC32 of its path inside the library is 0 mod 10: about a
tenth of the files, none in both halves, and a file keeps its half in every Python version that has it. The version
names the folder and is in its files.json, with each half's files: the library differs between versions, so a run's
config (its --data) says which one it read. A file that is not UTF-8 is left out, and files.json lists it.
"""

import argparse
import os
import platform
import sysconfig
import zlib

import train
from experiments.harness import run_main, write_json

SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
SEPARATOR = "\n\n"  # between files: each ends with a newline, so one blank line parts them


def library_files(source: str) -> list[str]:
    """The .py files under source, as sorted paths relative to it ('/'-separated), less SKIPPED_FOLDERS."""
    found = []
    for folder, subfolders, names in os.walk(source):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]  # pruned: never walked
        found += [os.path.relpath(os.path.join(folder, name), source).replace(os.sep, "/")
                  for name in names if name.endswith(".py")]
    return sorted(found)


def held_out(path: str) -> bool:
    return zlib.crc32(path.encode()) % 10 == 0


def build(source: str, out: str) -> dict:
    """Write out/train.txt, out/val.txt and out/files.json (each written, then renamed); return the manifest."""
    files = library_files(source) if os.path.isdir(source) else []
    if not files:
        raise train.UserError(f"--source {source}: no .py files there (this Python ships without its library's "
                              f"source?); pass the folder of a library's source")
    halves, not_utf8 = {"train": [], "val": []}, []  # half: [(path, text)]
    for path in files:
        try:
            text = open(os.path.join(source, path), "rb").read().decode("utf-8")
        except UnicodeDecodeError:
            not_utf8.append(path)
            continue
        halves["val" if held_out(path) else "train"].append((path, text))
    os.makedirs(out, exist_ok=True)
    for half, parts in halves.items():
        with open(os.path.join(out, f"{half}.txt.tmp"), "w", encoding="utf-8", newline="") as f:
            f.write(SEPARATOR.join(text for _, text in parts))
        os.replace(os.path.join(out, f"{half}.txt.tmp"), os.path.join(out, f"{half}.txt"))
    manifest = {"python": platform.python_version(), "source": source, "rule": "val: crc32(path) % 10 == 0",
                "bytes": {half: os.path.getsize(os.path.join(out, f"{half}.txt")) for half in halves},
                "files": {half: [path for path, _ in parts] for half, parts in halves.items()}, "not_utf8": not_utf8}
    write_json(os.path.join(out, "files.json"), manifest)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--source", default=sysconfig.get_paths()["stdlib"], help="the library's folder; default: "
                                                                                   "this Python's standard library")
    parser.add_argument("--out", help=f"the folder to write; default out/data/stdlib-{platform.python_version()}")
    args = parser.parse_args(argv)
    out = args.out or os.path.join("out", "data", f"stdlib-{platform.python_version()}")
    manifest = build(args.source, out)
    print(f"{out}: train.txt {len(manifest['files']['train'])} files, {manifest['bytes']['train']:,} bytes; "
          f"val.txt {len(manifest['files']['val'])} files, {manifest['bytes']['val']:,} bytes (Python "
          f"{manifest['python']}, {args.source}" + (f"; {len(manifest['not_utf8'])} not UTF-8, left out" if
                                                    manifest["not_utf8"] else "") + ")")
    print(f"train on it: python train.py --data {out}")
    return {"out": out, **manifest}


if __name__ == "__main__":
    run_main(main, "experiments/corpus.py")
