"""Render benchmark JSON files (vs_openflamingo, roofline, scaling, objectives, pformer_vs_blip2, token_merge,
generation) into Markdown tables and PNG plots.

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
VS_SUFFIXES = ("", "_interval2")  # vs_openflamingo keys: CosMo interval 1, then interval 2


def kind_of(data: dict) -> str:
    if data.get("benchmark") in ("roofline", "scaling", "objectives", "pformer_vs_blip2", "token_merge", "generation"):
        return data["benchmark"]
    if data.get("details", {}).get("benchmark") == "vs_openflamingo" or "train_step_time_ratio" in data:
        return "vs_openflamingo"
    raise ValueError("Unrecognised benchmark JSON (expected vs_openflamingo, roofline, scaling, objectives, "
                     "pformer_vs_blip2, token_merge or generation output).")


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


def save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close `fig`; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ vs_openflamingo
def render_vs(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    lines = ["## CosMo vs OpenFlamingo (ours / OpenFlamingo, same machine and venv)", ""]
    targets = data.get("targets", {})
    rows = []
    main = ("train_step_time_ratio", "trainable_params_ratio", "generate_tokens_per_s_ratio", "peak_memory_ratio")
    for suffix in VS_SUFFIXES:  # interval 1 (no suffix), then the interval-2 variant
        for key in (k + suffix for k in main):
            if suffix and key not in data and key not in targets:
                continue
            t = targets.get(key, {})
            met = t.get("met")
            rows.append([key, data.get(key), t.get("target", "-"), "-" if met is None else ("yes" if met else "no")])
    extra = [k + s for s in VS_SUFFIXES for k in ("train_step_time_ratio_frozen_embeddings",
                                                  "trainable_params_ratio_frozen_embeddings",
                                                  "peak_memory_ratio_frozen_embeddings")]
    extra += [f"trainable_params_ratio_released_2b{f}{s}" for s in ("", "_interval2", "_interval2_compress2")
              for f in ("", "_frozen_embeddings")]
    extra += [f"generate_tokens_per_s_ratio_batch8{s}" for s in VS_SUFFIXES] + ["generate_ceiling_ratio"]
    rows += [[key, data[key], "-", "-"] for key in extra if key in data]
    for prefix in ("generate_tokens_per_s_ratio", "generate_tokens_per_s_ratio_batch8", "generate_ceiling_ratio",
                   "generate_ceiling_with_encoding_ratio"):
        for suffix in VS_SUFFIXES:
            for n, r in data.get(f"{prefix}_by_images{suffix}", {}).items():
                rows.append([f"{prefix}{suffix} ({n} image{'s' if n != '1' else ''})", r, "-", "-"])
    for key, value in data.get("ratios_from_fastest_repeat", {}).items():
        rows.append([f"{key} (fastest repeat)", value, "-", "-"])
    lines += table(["metric", "ours / OpenFlamingo", "target", "met"], rows)
    if "generate_ceiling_ratio" in data:
        lines += ["", "generate_ceiling_ratio: generation speed of the bare LM both models wrap / OpenFlamingo's, the "
                      "most any model running this LM plus anything extra could reach; "
                      "generate_ceiling_with_encoding_ratio adds encoding the prompt's images to the bare LM's time."]
    if any(k.endswith("_interval2") for k in data):
        lines += ["", "*_interval2: CosMo with cross-attention before every second upper layer (no suffix: every "
                      "upper layer)."]
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
            abs_rows.append([f"{name}/cosmo-2b", "", "", f"{r['cosmo_trainable'] / 1e6:.1f}M",
                             f"{r['cosmo_total'] / 1e6:.1f}M"])
            abs_rows += [[f"{name}/cosmo-2b/{v}", "", "", f"{x['cosmo_trainable'] / 1e6:.1f}M", ""]
                         for v, x in r.get("variants", {}).items()]
            abs_rows.append([f"{name}/openflamingo", "", "", f"{r['openflamingo_trainable'] / 1e6:.1f}M", ""])
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
            series = [(s, label) for s, label in zip(VS_SUFFIXES, ("interval 1", "interval 2"))
                      if any(data.get(k + s) is not None for k in keys)]
            width = 0.8 / len(series)
            for j, (suffix, label) in enumerate(series):
                ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(keys))],
                       [data.get(k + suffix) or 0.0 for k in keys], width, label=f"CosMo {label}")
            for i, k in enumerate(keys):
                target = targets.get(k, {}).get("target")
                if target:
                    ax.hlines(float(target.split()[-1]), i - 0.4, i + 0.4, colors="tab:red", linestyles="--")
            if len(series) > 1:
                ax.legend(fontsize=7)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xticks(range(len(keys)), [k.replace("_ratio", "").replace("_", "\n") for k in keys], fontsize=8)
            ax.set_ylabel("ours / OpenFlamingo")
            ax.set_title("CosMo vs OpenFlamingo (red: target)")
            pngs.append(save_figure(plt, fig, out / "vs_openflamingo.png"))
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
    runs = [r for rows in data.get("runs", {}).values() for r in rows]
    if runs:
        lines += ["", "Every path and speed-switch variant:", ""]
        lines += table(["config", "batch x tokens", "path", "variant", "s/step", "of peak"],
                       [[r["config"], f"{r['batch']}x{r['seq_len']}", r["path"], r["variant"], r["step_time_s"],
                         f"{100 * r['fraction_of_peak']:.1f}%"] for r in runs])
    searches = [(name, key, m[key]) for name, m in data.get("memory", {}).items() for key in
                ("without_checkpointing", "with_checkpointing") if key in m]
    if searches:
        lines += ["", "Largest Trainer batch that fits:", ""]
        lines += table(["config", "checkpointing", "tokens", "batch", "peak GiB", "search ended"],
                       [[name, key.split("_")[0], m["seq_len"], m["batch"],
                         None if m["peak_allocated_bytes"] is None else m["peak_allocated_bytes"] / 2**30, m["stopped"]]
                        for name, key, m in searches])
    pngs = []
    if plt is not None and data["configs"]:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        names = [r["config"] for r in data["configs"]]
        ax.bar(names, [100 * r["fraction_of_peak"] for r in data["configs"]], color="tab:green")
        ax.set_ylabel("% of measured matmul peak")
        ax.set_title("Training-step FLOP/s utilisation")
        pngs.append(save_figure(plt, fig, out / "roofline.png"))
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
            pngs.append(save_figure(plt, fig, out / f"scaling_{axis}.png"))
    return lines, pngs


# ----------------------------------------------------------------------------------------------------- objectives
def render_objectives(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    c = data.get("config", {})
    seeds = c.get("seeds", c.get("seed"))
    seeds = ", ".join(map(str, seeds)) if isinstance(seeds, list) else seeds
    lines = [f"## VLP objectives on CosMo ({data['steps']} steps x batch {c.get('batch_size')}, "
             f"{c.get('train_samples')} training pairs, seed(s) {seeds})", ""]
    rows = []
    for name, e in data["settings"].items():
        r, losses, ratios = e["retrieval"], e.get("final_losses", {}), e.get("ratios_vs_itc", {})
        scores = [f"{r[s][k]:.3f}" for s in ("test", "test_iid") for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")]
        step = e.get("step_time_interleaved_s") or e.get("step_time_s")
        rows.append([name, *scores, step, ratios.get("step_time"),
                     *(losses.get(k) for k in ("lm_loss", "contrastive_loss", "itm_loss"))])
    lines += table(["setting", "test i2t R@1", "R@5", "test t2i R@1", "R@5", "iid i2t R@1", "R@5", "iid t2i R@1", "R@5",
                    "s/step", "step x itc", "lm_loss", "contrastive_loss", "itm_loss"], rows)
    pngs = []
    if plt is not None and rows:
        names = list(data["settings"])
        fig, ax = plt.subplots(figsize=(7, 3.3))
        width = 0.2
        bars = (("test", "i2t_r1"), ("test", "t2i_r1"), ("test_iid", "i2t_r1"), ("test_iid", "t2i_r1"))
        for j, (split, key) in enumerate(bars):
            ax.bar([i + (j - 1.5) * width for i in range(len(names))],
                   [data["settings"][n]["retrieval"][split][key] for n in names], width, label=f"{split} {key}")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("recall@1")
        ax.legend(fontsize=7)
        ax.set_title("Retrieval R@1 per objective setting")
        pngs.append(save_figure(plt, fig, out / "objectives.png"))
    return lines, pngs


# ----------------------------------------------------------------------------------------------- pformer_vs_blip2
def render_pformer(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    c = data.get("config", {})
    lines = [f"## P-Former-aligned BLIP-2 vs BLIP-2 ({c.get('stage1_steps')} + {c.get('stage2_steps')} steps, "
             f"batch {c.get('batch_size')}, seed {c.get('seed')})", ""]
    rows = []
    for arm, r in data["arms"].items():
        for split in ("test", "test_iid"):
            rows.append([arm, split, r["captioning"][split]["exact_match"], r["captioning"][split]["cider"],
                         r["vqa_zero_shot"][split]["accuracy"], r["vqa_2shot"][split]["accuracy"],
                         r["stages"]["stage1"]["step_time_s"], r["stages"]["stage2"]["step_time_s"]])
    lines += table(["model", "split", "caption exact match", "CIDEr", "VQA 0-shot", "VQA 2-shot", "stage1 s/step",
                    "stage2 s/step"], rows)
    brackets = data.get("vqa_brackets", {})
    if brackets:
        lines += ["", "VQA with the LM alone:", ""]
        lines += table(["context", *brackets],
                       [[k, *(brackets[s][k] for s in brackets)] for k in ("no_image", "caption_context")])
    if data.get("diagnostics"):
        lines += ["", "Diagnostics: " + ", ".join(f"{k} = {v}" for k, v in data["diagnostics"].items()) + "."]
    pngs = []
    metrics = data.get("summary", {}).get("metrics", {})
    if plt is not None and metrics:
        keys = list(next(iter(metrics.values())))
        fig, ax = plt.subplots(figsize=(8, 3.3))
        width = 0.8 / len(metrics)
        for j, (arm, values) in enumerate(metrics.items()):
            ax.bar([i + (j - (len(metrics) - 1) / 2) * width for i in range(len(keys))], [values[k] for k in keys],
                   width, label=arm)
        ax.set_xticks(range(len(keys)), [k.replace("/", "\n") for k in keys], fontsize=6)
        ax.legend(fontsize=7)
        ax.set_title("P-Former-aligned BLIP-2 vs BLIP-2")
        pngs.append(save_figure(plt, fig, out / "pformer_vs_blip2.png"))
    return lines, pngs


# ---------------------------------------------------------------------------------------------------- token_merge
def render_token_merge(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    settings = data.get("settings", {})
    lines = [f"## Token merging ({settings.get('tower', 'ViT tower')}, batch {settings.get('batch')}, "
             f"{data.get('machine', {}).get('device', '?')})", ""]
    tower = data["tower"]
    lines += table(["tower r", "tokens out", "images/s", "speedup", "matmul-FLOP ratio"],
                   [[p["r"], p["tokens_out"], p["images_per_s"], p["speedup"], p["flop_ratio"]] for p in tower.values()])
    lines += [""] + table(["SimVLG step", "tower r", "connector r", "visual tokens", "s/step", "speedup"],
                          [[k, p["vision_merge_r"], p["merge_r"], p["visual_tokens"], p["step_s"], p["speedup"]]
                           for k, p in data["simvlg_step"].items()])
    quality = data.get("simvlg_quality")
    if quality:
        q = quality["settings"]
        lines += ["", f"Caption quality, {q['steps']} steps x batch {q['batch']}, {q['eval_samples']} `{q['split']}` "
                      "captions:", ""]
        lines += table(["setting", "tower r", "connector r", "exact match", "CIDEr", "s/step"],
                       [[k, p.get("vision_merge_r", 0), p["merge_r"], p["exact_match"], p["cider"], p["s_per_step"]]
                        for k, p in quality.items() if isinstance(p, dict) and "exact_match" in p])
        lines += ["", f"Exact-match points lost to merging: {quality['exact_match_points_lost']:.1f}; "
                      f"step speedup {quality['step_speedup']:.2f}x."]
    pngs = []
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
        rs = [p["r"] for p in tower.values()]
        left.plot(rs, [p["speedup"] for p in tower.values()], "o-", label="measured")
        left.plot(rs, [p["flop_ratio"] for p in tower.values()], "s--", label="matmul-FLOP ratio")
        left.set_xlabel("tokens merged per layer (r)")
        left.set_ylabel("speedup over r=0")
        left.set_title("ViT tower forward+backward")
        left.legend(fontsize=7)
        names = list(data["simvlg_step"])
        right.bar(names, [data["simvlg_step"][n]["speedup"] for n in names], color="tab:purple")
        right.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        right.set_ylabel("speedup over no merging")
        right.set_title("SimVLG training step")
        pngs.append(save_figure(plt, fig, out / "token_merge.png"))
    return lines, pngs


# ----------------------------------------------------------------------------------------------------- generation
def render_generation(data: dict, out: Path, plt) -> tuple[list[str], list[Path]]:
    lines = [f"## Generation ({data.get('device', '?')})", ""]
    if "skipped" in data:
        return lines + [f"Skipped: {data['skipped']}."], []
    lines += [f"{data['preset']} in {data['dtype']}, {data['new_tokens']} new tokens (greedy).", ""]
    rows = [[key, r["tokens_per_s"]["cosmo"], r["tokens_per_s"]["lm_only"], r["cosmo_over_lm_tokens_per_s"],
             1e3 * r["time_s"]["media_encoding"]] for key, r in data["results"].items()]
    return lines + table(["prompt", "CosMo tokens/s", "bare LM tokens/s", "CosMo / bare LM", "encoding ms"], rows), []


RENDERERS = {"vs_openflamingo": render_vs, "roofline": render_roofline, "scaling": render_scaling,
             "objectives": render_objectives, "pformer_vs_blip2": render_pformer, "token_merge": render_token_merge,
             "generation": render_generation}


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
