"""Curves of the issue-15 comparison (benchmarks/compare_architectures.sh): validation loss and Dice per 100 steps.

Run: python benchmarks/plot_architecture_runs.py RUNS_DIR OUTPUT.png
"""
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

runs = {"FusionNet base 16": "fusionnet", "U-Net base 16": "unet", "FCN-8s base 24 / fc 256": "fcn8s"}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for label, name in runs.items():
    rows = list(csv.DictReader(open(f"{sys.argv[1]}/{name}/log.csv")))
    steps = [(int(r["epoch"]) + 1) * 100 for r in rows]
    axes[0].plot(steps, [float(r["val_loss"]) for r in rows], marker=".", label=label)
    axes[1].plot(steps, [float(r["val_dice"]) for r in rows], marker=".", label=label)
for ax, title in zip(axes, ("validation loss (BCE + Dice)", "validation membrane Dice")):
    ax.set_xlabel("training steps (batch 4, 256 px tiles)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
axes[0].legend()
fig.suptitle("ISBI 2012, slices 0-19 -> 20-24, 11 min of 2-core CPU each", fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
