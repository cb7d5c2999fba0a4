"""Tables and figures of docs/gradient_inversion.md from the evaluation's result files.

Reads ``summary.json`` (and the per-run arrays) of one or more ``lora-audit evaluate-gradients``
output folders and writes the markdown tables (stdout), the reconstruction grid and the defence curve:

    python benchmarks/gradient_inversion_report.py build/federated/eval build/federated/eval300 \\
        --img docs/img/gradient_inversion
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lora_audit.federated.evaluate import figure, summarise


ORDER = ["b1-known-gidm", "b1-known-ig", "b1-known-dlg", "b1-unknown-gidm+", "b1-unknown-ig", "b1-unknown-dlg",
         "b4-known-gidm", "b4-known-ig", "b4-known-dlg", "b4-unknown-gidm+", "b4-unknown-ig", "b4-unknown-dlg"]


def ordered(cells) -> list[str]:
    return sorted(cells, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c))


def table(summary: dict, title: str) -> str:
    lines = [f"**{title}**", "",
             "| cell | clients / images | PSNR dB [95% CI] | SSIM [95% CI] | rank-1 among 20 [95% CI] | identity cos | t error | iterations | s / client | s / iteration |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in ordered(summary["cells"]):
        r = summary["cells"][cell]
        if cell.startswith("defence"):
            continue
        lines.append(f"| {cell} | {r['clients']} / {r['images']} | {r['psnr']} [{r['psnr_ci'][0]}, {r['psnr_ci'][1]}] "
                     f"| {r['ssim']} [{r['ssim_ci'][0]}, {r['ssim_ci'][1]}] | {r['rank1']:.0%} [{r['rank1_ci'][0]:.0%}, "
                     f"{r['rank1_ci'][1]:.0%}] | {r['similarity']} | {r.get('t_abs_error', '-')} | {r['iterations']} "
                     f"| {r['seconds_per_client']} | {r['seconds_per_iteration']} |")
    return "\n".join(lines)


def defence_table(summary: dict) -> str:
    lines = ["| defence | DP epsilon (RDP, delta 1e-5) | clients | PSNR dB [95% CI] | SSIM | rank-1 [95% CI] |",
             "|---|---|---|---|---|---|"]
    for cell, r in summary["cells"].items():
        if not cell.startswith("defence"):
            continue
        eps = r.get("defence", {}).get("epsilon", "-")
        eps = f"{eps:.3g}" if isinstance(eps, float) else eps
        lines.append(f"| {cell.split('/', 1)[1]} | {eps} | {r['clients']} | {r['psnr']} [{r['psnr_ci'][0]}, {r['psnr_ci'][1]}] "
                     f"| {r['ssim']} | {r['rank1']:.0%} [{r['rank1_ci'][0]:.0%}, {r['rank1_ci'][1]:.0%}] |")
    return "\n".join(lines)


def defence_curve(summary: dict, baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for cell, r in summary["cells"].items():
        if cell.startswith("defence/clip"):
            sigma = float(cell.split("noise")[1])
            points.append((sigma, r))
    points.sort(key=lambda p: p[0])
    base = summary["cells"].get(baseline)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = [p[0] for p in points]
    for ax, key, label in ((a, "psnr", "PSNR (dB)"), (b, "rank1", "identity rank-1 among 20")):
        ys = [p[1][key] for p in points]
        lo = [p[1][key + "_ci"][0] for p in points]
        hi = [p[1][key + "_ci"][1] for p in points]
        ax.errorbar(xs, ys, yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]], marker="o",
                    capsize=3, label="clip + noise")
        if base is not None:
            ax.axhline(base[key], color="grey", ls="--", label="no defence")
        ax.set_xscale("log")
        ax.set_xlabel("noise multiplier sigma")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", type=Path)
    parser.add_argument("--img", type=Path, default=Path("docs/img/gradient_inversion"))
    parser.add_argument("--identities", type=int, nargs="*", default=list(range(302000, 302006)))
    args = parser.parse_args()
    for out in args.outs:
        summary = summarise(out)
        print(table(summary, str(out)), "\n")
        if any(c.startswith("defence") for c in summary["cells"]):
            print(defence_table(summary), "\n")
            defence_curve(summary, "b1-known-gidm", args.img / f"defence_curve_{out.name}.png")
        b1 = [c for c in ordered(summary["cells"]) if c.startswith("b1-")]
        if b1:
            figure(out, b1, args.identities, args.img / f"grid_b1_{out.name}.png")
            print(f"grid columns ({out.name}): private photo, " + ", ".join(b1), "\n")
        b4 = [c for c in ordered(summary["cells"]) if c.startswith("b4-")]
        if b4:
            for k in range(4):
                figure(out, b4, args.identities[:3], args.img / f"grid_b4_{out.name}_image{k}.png", image=k)
    print(json.dumps({"written": sorted(str(p) for p in args.img.glob("*.png"))}))


if __name__ == "__main__":
    main()
