"""Render benchmark JSON files (vs_openflamingo, roofline, scaling) into Markdown tables and PNG plots.

    python bench/report.py --input vs_openflamingo.json roofline.json scaling.json --output-dir bench_report

Writes `report.md` and one PNG per plot into the output directory and prints the Markdown. Plots need matplotlib
(`pip install matplotlib`); without it only the Markdown is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MIB = 2**20


def kind_of(data: dict) -> str:
    if data.get("benchmark") in ("roofline", "scaling"):
        return data["benchmark"]
    if data.get("details", {}).get("benchmark") == "vs_openflamingo" or "train_step_time_ratio" in data:
        return "vs_openflamingo"
    raise ValueError("Unrecognised benchmark JSON (expected vs_openflamingo, roofline or scaling output).")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------------ vs_openflamingo
def render_vs(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    lines = ["## CosMo vs OpenFlamingo (ours / OpenFlamingo, same machine and venv)", ""]
    targets = data.get("targets", {})
    rows = []
    for key in ("train_step_time_ratio", "trainable_params_ratio", "generate_tokens_per_s_ratio", "peak_memory_ratio"):
        t = targets.get(key, {})
        met = t.get("met")
        rows.append([key, data.get(key), t.get("target", "-"), "-" if met is None else ("yes" if met else "no")])
    for key in ("train_step_time_ratio_frozen_embeddings", "trainable_params_ratio_frozen_embeddings",
                "peak_memory_ratio_frozen_embeddings", "trainable_params_ratio_released_2b",
                "trainable_params_ratio_released_2b_frozen_embeddings"):
        if key in data:
            rows.append([key, data[key], "-", "-"])
    for n, r in data.get("generate_tokens_per_s_ratio_by_images", {}).items():
        rows.append([f"generate_tokens_per_s_ratio ({n} image{'s' if n != '1' else ''})", r, "-", "-"])
    for key, value in data.get("ratios_from_fastest_repeat", {}).items():
        rows.append([f"{key} (fastest repeat)", value, "-", "-"])
    lines += table(["metric", "ours / OpenFlamingo", "target", "met"], rows)
    results = data.get("details", {}).get("results", {})
    abs_rows = []
    for name, r in results.items():
        if "error" in r:
            abs_rows.append([name, "error", "", "", ""])
        elif "params" in r and "peak_rss_delta_bytes" in r:
            abs_rows.append([name, "", f"{r['peak_rss_delta_bytes'] / MIB:.0f} MiB",
                             f"{r['params']['trainable'] / 1e6:.2f}M", f"{r['params']['total'] / 1e6:.2f}M"])
        elif isinstance(r.get("step_time_s"), dict):
            abs_rows += [[f"{name}/{m}", f"{t:.3f} s/step", "", "", ""] for m, t in r["step_time_s"].items()]
        elif isinstance(r.get("tokens_per_s"), dict):
            abs_rows += [[f"{name}/{m}", f"{t:.2f} tokens/s", "", "", ""] for m, t in r["tokens_per_s"].items()]
        elif "cosmo_trainable" in r:
            abs_rows += [[f"{name}/cosmo-2b", "", "", f"{r['cosmo_trainable'] / 1e6:.1f}M", f"{r['cosmo_total'] / 1e6:.1f}M"],
                         [f"{name}/openflamingo", "", "", f"{r['openflamingo_trainable'] / 1e6:.1f}M", ""]]
    if abs_rows:
        lines += ["", "Absolute figures (noisy on a small CPU):", ""]
        lines += table(["run", "time", "peak memory", "trainable", "total params"], abs_rows)
    machine = data.get("details", {}).get("machine", {})
    if machine:
        lines += ["", f"torch {machine.get('torch')}, transformers {machine.get('transformers')}, "
                      f"open-flamingo {machine.get('open_flamingo', 'n/a')}, {machine.get('cpu_count')} CPUs "
                      f"({machine.get('cpu_model', '?')})."]
    pngs = []
    if plt is not None:
        keys = [k for k in ("train_step_time_ratio", "trainable_params_ratio", "generate_tokens_per_s_ratio",
                            "peak_memory_ratio") if data.get(k) is not None]
        if keys:
            fig, ax = plt.subplots(figsize=(7, 3.5))
            ax.bar(range(len(keys)), [data[k] for k in keys], color="tab:blue")
            for i, k in enumerate(keys):
                target = targets.get(k, {}).get("target")
                if target:
                    ax.hlines(float(target.split()[-1]), i - 0.4, i + 0.4, colors="tab:red", linestyles="--")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xticks(range(len(keys)), [k.replace("_ratio", "").replace("_", "\n") for k in keys], fontsize=8)
            ax.set_ylabel("ours / OpenFlamingo")
            ax.set_title("CosMo vs OpenFlamingo (red: target)")
            fig.tight_layout()
            pngs.append(out / "vs_openflamingo.png")
            fig.savefig(pngs[-1], dpi=110)
            plt.close(fig)
    return lines, pngs


# ------------------------------------------------------------------------------------------------------- roofline
def render_roofline(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    lines = [f"## Roofline ({data.get('device', '?')})", ""]
    if "skipped" in data:
        return lines + [f"Skipped: {data['skipped']}."], []
    peak = data["peak_matmul"]
    lines += [f"Measured peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} matmul, n={peak['n']}).", ""]
    rows = [[r["config"], f"{r['batch']}x{r['seq_len']}", f"{r['train_step_flops'] / 1e9:.2f}",
             f"{r['step_time_s']:.3f}", f"{r['achieved_flops_per_s'] / 1e9:.2f}", f"{100 * r['fraction_of_peak']:.1f}%"]
            for r in data["configs"]]
    lines += table(["config", "batch x tokens", "GFLOP/step", "s/step", "GFLOP/s", "of peak"], rows)
    pngs = []
    if plt is not None and data["configs"]:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        names = [r["config"] for r in data["configs"]]
        ax.bar(names, [100 * r["fraction_of_peak"] for r in data["configs"]], color="tab:green")
        ax.set_ylabel("% of measured matmul peak")
        ax.set_title("Training-step FLOP/s utilisation")
        fig.tight_layout()
        pngs.append(out / "roofline.png")
        fig.savefig(pngs[-1], dpi=110)
        plt.close(fig)
    return lines, pngs


# -------------------------------------------------------------------------------------------------------- scaling
def render_scaling(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    lines = ["## Scaling (training step, batch 1)", ""]
    pngs = []
    models = ("cosmo", "openflamingo")
    for axis, rows in data.get("series", {}).items():
        body = []
        for row in rows:
            cells = [row[axis]]
            for m in models:
                r = row.get(m, {})
                cells += ([f"{r['step_time_s']:.3f}", f"{r['peak_memory_bytes'] / MIB:.0f}"] if "step_time_s" in r
                          else ["error", "error"])
            cells += [row.get("step_time_ratio"), row.get("peak_memory_ratio")]
            body.append(cells)
        lines += [f"### {axis}", ""]
        lines += table([axis, "ours s/step", "ours MiB", "OpenFlamingo s/step", "OpenFlamingo MiB", "time ratio",
                        "memory ratio"], body)
        lines.append("")
        if plt is not None and rows:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.3))
            for m, style in zip(models, ("o-", "s--")):
                pts = [(row[axis], row[m]) for row in rows if "step_time_s" in row.get(m, {})]
                if pts:
                    a1.plot([p[0] for p in pts], [p[1]["step_time_s"] for p in pts], style, label=m)
                    a2.plot([p[0] for p in pts], [p[1]["peak_memory_bytes"] / MIB for p in pts], style, label=m)
            for ax, ylabel in ((a1, "step time (s)"), (a2, "peak memory (MiB)")):
                ax.set_xscale("log", base=2)
                ax.set_xlabel(axis)
                ax.set_ylabel(ylabel)
                ax.legend()
            fig.suptitle(f"Scaling with {axis}")
            fig.tight_layout()
            pngs.append(out / f"scaling_{axis}.png")
            fig.savefig(pngs[-1], dpi=110)
            plt.close(fig)
    return lines, pngs


RENDERERS = {"vs_openflamingo": render_vs, "roofline": render_roofline, "scaling": render_scaling}


def render(inputs: list[Path], out_dir: Path) -> tuple[str, list[Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    lines, pngs = ["# Benchmark report", ""], []
    if plt is None:
        lines += ["(matplotlib is not installed: no plots.)", ""]
    for path in inputs:
        data = json.loads(Path(path).read_text())
        section, images = RENDERERS[kind_of(data)](data, out_dir, plt)
        lines += section + [""]
        lines += [f"![{p.stem}]({p.name})" for p in images]
        if images:
            lines.append("")
        pngs += images
    markdown = "\n".join(lines).rstrip() + "\n"
    (out_dir / "report.md").write_text(markdown)
    return markdown, pngs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, nargs="+", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    markdown, _ = render(args.input, args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
