"""One figure style for the whole study; every figure is saved as PNG and PDF.

Saved files carry no creation date, so regenerating an unchanged figure gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import seaborn as sns

from ppt_core.run import arms, artifacts

ARM_PALETTE = {
    "base": "#4d4d4d",
    "pruned-noft": "#999999",
    "full-nodp": "#1f77b4",
    "pruned-nodp": "#ff7f0e",
}


def use_style() -> None:
    """The study's figure style: seaborn whitegrid, readable sizes, fixed DPI."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.titleweight": "bold",
        "svg.hashsalt": "ppt",
    })


def arm_color(arm: str) -> str:
    """A stable colour per arm: blues for the full model, oranges for the pruned one, darker = more private."""
    if arm in ARM_PALETTE:
        return ARM_PALETTE[arm]
    parsed = arms.parse(arm)
    family = "Oranges" if parsed.pruned else "Blues"
    epsilon = parsed.epsilon if parsed.private else 8.0
    shade = min(0.95, 0.45 + 0.5 / max(epsilon, 0.5) ** 0.5)
    return matplotlib.colors.to_hex(plt.get_cmap(family)(shade))


def save(fig, name: str, figures_dir: str | Path) -> None:
    """Save `fig` as figures_dir/name.png and .pdf (atomically, without timestamps). Returns nothing, so a
    notebook cell ending in `plots.save(...)` shows the figure and not a list of paths."""
    for suffix, metadata in ((".png", {"Software": None}), (".pdf", {"CreationDate": None, "Producer": None})):
        with artifacts.atomic_path(Path(figures_dir) / f"{name}{suffix}") as tmp:
            fig.savefig(tmp, format=suffix[1:], metadata=metadata)
