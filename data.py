"""
Tokenizer, corpus and batches for train.py. Nothing downloads by default:

  tokenizer  "bytes": a tiktoken Encoding built in code (256 byte tokens + <|endoftext|>). Any tiktoken encoding name
             ("gpt2", "cl100k_base") is opt-in; tiktoken downloads its vocabulary once and caches it. Fine-tuning
             GPT-2 weights uses "gpt2".
  corpus     the Python documentation topics that ship inside every CPython (pydoc_data.topics, ~465 KB of English),
             or --data PATH: any UTF-8 text file.

Token ids are cached as flat uint16 arrays (uint32 for vocabularies above 65,536) under data_cache/, in files named
after a hash of the corpus and the tokenizer, so that a stale cache is never reused; batches are random windows read
through np.memmap, as in nanoGPT.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import tiktoken
import torch

CACHE_DIR = Path(__file__).resolve().parent / "data_cache"
DEFAULT_CORPUS = "pydoc"


class DataError(ValueError):
    """Bad data or tokenizer input, reported to the user as one line."""


def byte_encoding() -> tiktoken.Encoding:
    """256 byte tokens and <|endoftext|>: no merges, no vocabulary file."""
    return tiktoken.Encoding(name="bytes", pat_str=r"(?s).{1,256}", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": 256})


ENCODINGS = {"bytes": byte_encoding}  # encodings built in code; register your own here (the tests add a tiny BPE)


def get_tokenizer(name: str = "bytes") -> tiktoken.Encoding:
    """An encoding of ENCODINGS, or a tiktoken encoding name ("gpt2", "cl100k_base": downloads once)."""
    if name in ENCODINGS:
        return ENCODINGS[name]()
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # unknown name, or the vocabulary cannot be downloaded
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        raise DataError(f"cannot load tiktoken encoding {name!r} ({reason}); tiktoken downloads named encodings once, "
                        f"so run once online (or point TIKTOKEN_CACHE_DIR at a cache), or use the offline default "
                        f"--tokenizer bytes") from None


def load_corpus(path: str) -> str:
    """The text of `path`, or of the bundled Python documentation when path is "pydoc"."""
    if path == DEFAULT_CORPUS:
        from pydoc_data.topics import topics
        return "\n\n".join(topics[key] for key in sorted(topics))
    if not os.path.isfile(path):
        raise DataError(f"--data {path}: no such file")
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--data {path}: not UTF-8 text (byte {e.start}); convert it, e.g. iconv -t utf-8") from None
    if not text.strip():
        raise DataError(f"--data {path}: the file is empty")
    return text


def prepare(path: str, tokenizer: str, val_fraction: float) -> dict[str, Path]:
    """Tokenize the corpus once; return the cached train / val token files (the last val_fraction is val)."""
    cache_dir = CACHE_DIR
    text = load_corpus(path)
    enc = get_tokenizer(tokenizer)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
    files = {split: cache_dir / f"{key}-{enc.name}-{enc.n_vocab}-{val_fraction:g}.{split}.{np.dtype(dtype).name}"
             for split in ("train", "val")}
    if all(f.exists() for f in files.values()):
        return files
    ids = np.array(enc.encode_ordinary(text), dtype=dtype)
    n_val = int(len(ids) * val_fraction)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", ids[:len(ids) - n_val]), ("val", ids[len(ids) - n_val:])):
        tmp = files[split].with_suffix(f".tmp{os.getpid()}")
        part.tofile(tmp)
        os.replace(tmp, files[split])  # atomic: a half-written cache is never read
    return files


class Batches:
    """Random windows of block_size + 1 tokens from a token file: inputs x and next-token targets y, (B, T) each.
    source is the corpus the file was made from (--data), named in error messages."""

    def __init__(self, file: Path, block_size: int, batch_size: int, device: torch.device, seed: int, source: str):
        self.file, self.block_size, self.batch_size, self.device = file, block_size, batch_size, device
        self.dtype = np.dtype(file.suffix[1:])
        n_tokens = file.stat().st_size // self.dtype.itemsize
        if n_tokens < block_size + 2:
            raise DataError(f"--data {source}: the {file.name.rsplit('.', 2)[1]} split has {n_tokens} tokens, fewer "
                            f"than one block of {block_size} + 1; use a smaller --block_size or a larger corpus")
        self.n_tokens = n_tokens
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(self.file, dtype=self.dtype, mode="r")  # re-opened each time: no memory growth (nanoGPT)
        starts = torch.randint(self.n_tokens - self.block_size - 1, (self.batch_size,), generator=self.generator)
        windows = np.stack([data[i:i + self.block_size + 1] for i in starts.tolist()])  # (B, T+1)
        windows = torch.from_numpy(windows.astype(np.int64))
        x, y = windows[:, :-1], windows[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
