"""The PNG chart of a results document (``perf/results/latest.json``).

``python -m perf.chart [latest.json [out.png]]`` redraws it without measuring again.
Needs matplotlib: when it is missing, :func:`draw` says how to install it and returns
None (the table and JSON do not depend on it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from perf.dataset import human

MiB = 1 << 20


def draw(doc: dict[str, Any], png: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("perf: matplotlib is not installed, so no chart: pip install matplotlib",
              file=sys.stderr)
        return None

    fig, axes = plt.subplots(3, 2, figsize=(15, 15))
    (ax_rate, ax_thr), (ax_stage, ax_rss), (ax_ratio, ax_files) = axes
    rows = [r for r in doc["table"] if "throttled" not in r["name"]]

    # (a) MB/s of every contender, min-max as error bars, ratio written next to it.
    names = [r["name"] for r in rows][::-1]
    med = [r["mbps"] for r in rows][::-1]
    lo = [r["mbps"] - r["min"] for r in rows][::-1]
    hi = [r["max"] - r["mbps"] for r in rows][::-1]
    colors = ["#1f77b4" if n.startswith(("prep", "verify", "import")) else "#999999"
              for n in names]
    ax_rate.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
    for y, r in enumerate(rows[::-1]):
        if r["ratio"] is not None:
            ax_rate.text(r["max"], y, f"  {r['mbps']:.0f} MB/s, {r['ratio']:.2f}x",
                         va="center", fontsize=8)
    ax_rate.set_xscale("log")
    ax_rate.set_xlabel("MB/s of input (median, min-max), log scale")
    s = doc["settings"]
    ax_rate.set_title(f"{s['size'] / 2**30:g} GiB dataset, {s['cache']} cache, "
                      f"{doc['machine']['cpus']} CPUs; ratio vs tar | zstd -T0 (same level)",
                      fontsize=10)
    ax_rate.tick_params(axis="y", labelsize=8)

    # (b) throttled drives: MB/s to the drives against one drive and the aggregate.
    scenarios = [t for t in doc.get("throttled") or [] if "error" not in t]
    if scenarios:
        labels, inp, stored, limits = [], [], [], []
        for t in scenarios:
            bound = "control" in t["keys"][0]
            for key in t["keys"]:
                if key in t:
                    mode = "parallel" if "parallel" in key else "sequential"
                    labels.append(f"{mode}\n{t['drives']}x{t['limit_mbps_each']:g} MB/s"
                                  + (f"\n(drive-bound, {human(t['dataset_bytes'])})"
                                     if bound else ""))
                    inp.append(t[key]["mbps"])
                    stored.append(t[key]["stored_mbps"])
                    limits.append((t["limit_mbps_each"], t["aggregate_mbps"]))
        x = range(len(labels))
        ax_thr.bar([i - 0.2 for i in x], inp, width=0.4, label="input MB/s", color="#1f77b4")
        ax_thr.bar([i + 0.2 for i in x], stored, width=0.4, label="MB/s written to the drives",
                   color="#ff7f0e")
        for i, (one, agg) in enumerate(limits):
            ax_thr.hlines(one, i - 0.45, i + 0.45, colors="gray", linestyles="--",
                          label="one drive" if i == 0 else None)
            ax_thr.hlines(agg, i - 0.45, i + 0.45, colors="black", linestyles=":",
                          label="all drives (aggregate)" if i == 0 else None)
        ax_thr.set_xticks(list(x), labels, fontsize=8)
        ax_thr.set_yscale("log")
        ax_thr.legend(fontsize=8)
        main = scenarios[0]
        c = main["check"]
        ax_thr.set_title(f"loop devices throttled with cgroup {main['cgroup'].split()[0]} "
                         f"(dd direct at {main['limit_mbps_each']:g}: "
                         f"{c['dd_direct_in_cgroup_mbps']:.0f} MB/s)", fontsize=10)
    else:
        errors = [t.get("error", "") for t in doc.get("throttled") or []]
        ax_thr.text(0.5, 0.5, "throttled scenario not measured\n" + " ".join(errors),
                    ha="center", va="center", wrap=True)
        ax_thr.set_axis_off()

    # (c) where prep's time goes: busy seconds per stage as % of prep's elapsed time.
    prof = doc.get("stage_profile") or {}
    if prof:
        stages = sorted(prof["busy_pct"], key=lambda k: -prof["busy_pct"][k])
        ax_stage.bar(stages, [prof["busy_pct"][k] for k in stages], color="#2ca02c",
                     label="stage busy (prep's counters)")
        ax_stage.bar(["CPU\n(all threads)"], [100 * prof["cpu_s"] / prof["wall_s"]],
                     color="#8c564b", label="CPU seconds / wall (200% = both cores)")
        probe = (doc.get("profile") or {}).get("trio_probe")
        if probe:
            ax_stage.bar(["Trio thread\nidle"], [100 * probe["io_wait_s"] / probe["wall_s"]],
                         color="#7f7f7f", label="Trio thread idle in epoll (perf.probe)")
        spy = (doc.get("profile") or {}).get("py_spy")
        if spy:
            ax_stage.bar(["GIL\nheld"], [spy["gil_held_pct"]], color="#bcbd22",
                         label="some thread holds the GIL (py-spy --gil)")
        ax_stage.legend(fontsize=8)
        ax_stage.tick_params(axis="x", labelsize=8)
        ax_stage.set_ylabel("% of prep's run time")
        ax_stage.set_title(f"prep sequential: busy per stage; CPU "
                           f"{100 * prof['cpu_share_of_cores']:.0f}% of "
                           f"{doc['machine']['cpus']} cores", fontsize=10)
    else:
        ax_stage.set_axis_off()

    # (d) peak RSS per contender and prep's by dataset size.
    rss_rows = [(r["name"], r["peak_rss_mib"]) for r in rows]
    rss_rows += [(f"prep @ {x['size'] / 2**30:g} GiB", x["peak_rss"] / MiB)
                 for x in doc.get("rss_by_size", [])]
    ax_rss.barh([n for n, _ in rss_rows][::-1], [v for _, v in rss_rows][::-1],
                color="#9467bd")
    ax_rss.axvline(300, color="red", ls="--", label="300 MiB limit for prep")
    ax_rss.set_xlabel("peak RSS, MiB (process tree)")
    ax_rss.legend(fontsize=8)
    ax_rss.tick_params(axis="y", labelsize=8)
    ax_rss.set_title("memory", fontsize=10)

    _ratios(ax_ratio, doc.get("receiving") or [])
    _by_file_count(ax_files, doc.get("filecount") or [])
    fig.suptitle(f"pipeline perf, {doc['when']}", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def _ratios(ax: Any, rows: list[dict[str, Any]]) -> None:
    """(e) every ratio issue 18 sets, per tree and command, against its target."""
    if not rows:
        ax.set_axis_off()
        return
    labels = [f"{r['command']}\n({r['tree']})" for r in rows]
    x = range(len(rows))
    ax.bar(x, [r["ratio"] for r in rows], width=0.6,
           color=["#2ca02c" if r["ok"] else "#d62728" for r in rows])
    ax.scatter(x, [r["target"] for r in rows], marker="_", s=900, color="black", zorder=3,
               label="target")
    for i, r in enumerate(rows):
        ax.text(i, r["ratio"], f"{r['ratio']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("ratio to tar | zstd -1 -T0 (same tree, same run)")
    ax.legend(fontsize=8)
    ax.set_title("issue 18's ratios: green met, red missed", fontsize=10)


def _by_file_count(ax: Any, rows: list[dict[str, Any]]) -> None:
    """(f) peak RSS of the largest process against the number of files (perf.filecount)."""
    if not rows:
        ax.text(0.5, 0.5, "RSS by file count not measured (--filecounts)", ha="center",
                va="center")
        ax.set_axis_off()
        return
    counts = [r["files"] for r in rows]
    for cmd, color in (("prep", "#1f77b4"), ("verify", "#2ca02c"), ("import", "#d62728")):
        rss = [r[cmd]["maxrss_mib"] for r in rows]
        ax.plot(counts, rss, marker="o", color=color, label=cmd)
        ax.annotate(f"{rss[-1]:.0f} MiB", (counts[-1], rss[-1]), fontsize=8,
                    textcoords="offset points", xytext=(-40, 6))
    ax.set_xscale("log")
    ax.set_xticks(counts, [f"{c:,}" for c in counts])
    ax.set_xlabel("files (small, 64 B to 2 KiB)")
    ax.set_ylabel("peak RSS of the largest process, MiB")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("memory by file count (flat is the goal)", fontsize=10)


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).parent / "results" / "latest.json"
    png = Path(argv[1]) if len(argv) > 1 else src.with_name("perf.png")
    return 0 if draw(json.loads(src.read_text()), png) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
