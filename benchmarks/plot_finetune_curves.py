"""Learning curves of bench_finetune.py's arms: training loss per epoch (issue 23).

Run: python benchmarks/plot_finetune_curves.py ARMS_DIR OUTPUT.png [STEPS_PER_EPOCH]
(ARMS_DIR is bench_finetune.py's --out: one run folder per arm, each with its log.csv.)
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARMS = {"finetune_1": "fine-tuned, 1 section", "finetune_3": "fine-tuned, 3 sections",
        "finetune_10": "fine-tuned, 10 sections", "scratch_10": "from scratch, 10 sections"}


def main(arms_dir, output, steps_per_epoch=50):
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, label in ARMS.items():
        log = os.path.join(arms_dir, name, "log.csv")
        if not os.path.isfile(log):
            continue
        with open(log) as handle:
            rows = list(csv.DictReader(handle))
        steps = [(int(row["epoch"]) + 1) * steps_per_epoch for row in rows]
        ax.plot(steps, [float(row["loss"]) for row in rows], marker=".", label=label)
    ax.set_xlabel("training steps (4 tiles of 256 px)")
    ax.set_ylabel("training loss (BCE + Dice)")
    ax.set_title("SNEMI3D boundaries: fine-tuning the ISBI model vs from scratch", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(v) for v in sys.argv[3:4]))
