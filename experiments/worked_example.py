"""
The README's worked example and budget table: dW of a small layer under every compression, and r^ at real sizes.

    python -m experiments.worked_example
"""

import torch
import torch.nn as nn

import mora


def worked_example() -> str:
    """dW of an 8 x 8 layer with r^ = 4 (r=1) for every compression, M the circulant [[1, 2, 3, 4], [4, 1, 2, 3], ...]
    (rank 4): where M's copies land, and the rank each compression reaches. Two matrices side by side."""
    blocks = []
    for name in ("share", "rotate", "truncate", "share_contiguous", "decouple"):  # the README shows the first pair
        layer = mora.MoRALinear(nn.Linear(8, 8, bias=False), r=1, compress=name, dense=False)
        with torch.no_grad():
            layer.M.copy_(torch.stack([torch.arange(1.0, 5.0).roll(i) for i in range(4)]))
        delta = layer.delta_weight()
        title = f"{name}: rank {torch.linalg.matrix_rank(delta.double()).item()}"
        blocks.append([f"{title:<40}"] + ["".join(f"{v:5.1f}" for v in row) for row in delta.tolist()])
    pairs = [blocks[i:i + 2] for i in range(0, len(blocks), 2)]
    return "\n\n".join("\n".join("   ".join(lines).rstrip() for lines in zip(*pair)) for pair in pairs)


def budget_table() -> str:
    """Trainable parameters and the largest rank of dW for LoRA and MoRA at real layer sizes."""
    lines = ["| in x out | r | LoRA: params, max rank | MoRA share: r^, params, max rank "
             "| MoRA rotate: r^, params, max rank |", "|---|---|---|---|---|"]
    for n_in, n_out in [(768, 768), (4096, 4096), (4096, 11008)]:
        for r in (8, 256):
            share, rotate = mora.r_hat_of(n_in, n_out, r), mora.r_hat_of(n_in, n_out, r, even=True)
            lines.append(f"| {n_in} x {n_out} | {r} | {r * (n_in + n_out):,}, {r} | {share}, {share ** 2:,}, {share} "
                         f"| {rotate}, {rotate ** 2:,}, {min(n_in, n_out)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(worked_example() + "\n\n" + budget_table())
