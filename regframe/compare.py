"""``regframe compare RUN_DIR... --out report.html``: compare training runs offline, without W&B.

A run directory is any folder holding ``val_pairs.jsonl`` (:mod:`regframe.pair_records`), which every
``RegistrationModule`` writes into its run's own directory at each validation
(:func:`regframe.run_config.run_directory`: ``runs/<project>/<W&B run id>/`` for a W&B run, online
or offline, or a CSV/TensorBoard logger's version folder such as ``lightning_logs/version_0/``).

The report shows, side by side, the per-organ Dice box plots at each run's last validation and the
validation curves (mean per-pair Dice, i.e. ``val/dice``, against the training step); then the
Learn2Reg-style aggregates of the per-pair Dice at the last validation (mean, std, 30th percentile,
mean of the lowest 30 %) with SDlogJ, folding and HD95 where recorded, the mean Dice per organ and, for
every run after the first, a paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided)
of its per-pair Dice against the first run's over their common pairs. ``--out *.html`` writes one
self-contained page (figure embedded as PNG, tables as HTML); ``--out *.png`` writes the figure with
the tables drawn under it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import wilcoxon

from regframe.errors import RegframeInputError
from regframe.metrics import aggregate
from regframe.pair_records import read_pair_records, records_filename

RECORDS = records_filename("val")
SUMMARY_METRICS = ("sdlogj", "fold_pct", "hd95")  # reported as means next to the Dice statistics


@dataclass
class Run:
    """One run's validation records (``records``: one dict per pair and validation)."""

    name: str
    path: Path
    records: list[dict[str, Any]]

    @property
    def last_step(self) -> int:
        return max(record["step"] for record in self.records)

    def final_pairs(self) -> dict[str, dict[str, Any]]:
        """pair_id -> record of the last validation (a pair validated twice at that step: the later)."""
        return {r["pair_id"]: r for r in self.records if r["step"] == self.last_step}

    def curve(self) -> tuple[list[int], list[float]]:
        """Steps and the mean finite per-pair Dice at each (what ``val/dice`` logs)."""
        by_step: dict[int, dict[str, float]] = {}
        for record in self.records:
            by_step.setdefault(record["step"], {})[record["pair_id"]] = record["dice"]
        steps = sorted(by_step)
        return steps, [float(np.nanmean(list(by_step[s].values()))) if _any_finite(by_step[s].values())
                       else float("nan") for s in steps]

    def summary(self) -> dict[str, dict[str, float]]:
        """:func:`regframe.metrics.aggregate` of the scalar metrics of the last validation."""
        pairs = self.final_pairs().values()
        return aggregate([{k: v for k, v in r.items() if k not in ("step", "epoch", "pair_id", "dice_per_organ")}
                          for r in pairs])

    def organ_dice(self) -> dict[str, list[float]]:
        """organ -> finite per-pair Dice of the last validation (organs in order of appearance)."""
        organs: dict[str, list[float]] = {}
        for record in self.final_pairs().values():
            for organ, value in record["dice_per_organ"].items():
                organs.setdefault(organ, [])
                if math.isfinite(value):
                    organs[organ].append(value)
        return organs


def _any_finite(values) -> bool:
    return any(math.isfinite(v) for v in values)


def records_path(run_dir: Path) -> Path:
    """The ``val_pairs.jsonl`` of a run directory."""
    if not run_dir.exists():
        raise RegframeInputError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RegframeInputError(f"run directory {run_dir} is a file, not a directory")
    if (run_dir / RECORDS).is_file():
        return run_dir / RECORDS
    raise RegframeInputError(f"{run_dir}: no per-pair validation metrics ({RECORDS}, written at every "
                             "validation of a run with a logger); was the run validated?")


def run_name(run_dir: Path) -> str:
    """A short name: the logger's ``name`` or ``group`` from the ``config.yaml`` regframe saves in the
    run directory, and the folder's name (the W&B run id or ``version_N``), e.g. ``demo-4mxxewe5``."""
    folder = run_dir.resolve()
    config = folder / "config.yaml"
    label = None
    if config.is_file():
        try:
            logger = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("logger")
        except yaml.YAMLError:
            logger = None
        init_args = (logger.get("init_args") or {}) if isinstance(logger, dict) else {}
        label = init_args.get("name") or init_args.get("group")
    return f"{label}-{folder.name}" if label else folder.name


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """Read every run, named by :func:`run_name` (by the paths as given when names repeat)."""
    runs = []
    for run_dir in run_dirs:
        path = records_path(run_dir)
        records = read_pair_records(path)
        if not records:
            raise RegframeInputError(f"{path}: no validation records")
        runs.append(Run(run_name(run_dir), run_dir, records))
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)
    return runs


def paired_wilcoxon(reference: Run, other: Run) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of ``other`` vs ``reference`` per-pair Dice over their
    common pairs with finite Dice in both (last validations): ``n``, ``mean_difference``
    (other - reference), ``statistic``, ``p_value`` (NaN when there are no non-zero differences)."""
    ref, oth = reference.final_pairs(), other.final_pairs()
    common = [p for p in ref if p in oth and math.isfinite(ref[p]["dice"]) and math.isfinite(oth[p]["dice"])]
    a = np.array([oth[p]["dice"] for p in common])
    b = np.array([ref[p]["dice"] for p in common])
    result = {"n": len(common), "mean_difference": float((a - b).mean()) if common else float("nan"),
              "statistic": float("nan"), "p_value": float("nan")}
    if common and np.any(a != b):
        with warnings.catch_warnings():  # scipy warns that exact p-values need more pairs; the number stands
            warnings.simplefilter("ignore")
            test = wilcoxon(a, b)
        result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
    return result


# ----------------------------------------------------------------------------- tables
def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def aggregate_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-run aggregates at the last validation."""
    metrics = [m for m in SUMMARY_METRICS if any(m in run.summary() for run in runs)]
    header = ["run", "step", "pairs", "Dice mean", "Dice std", "Dice p30", "Dice low-30% mean",
              *[f"{m} mean" for m in metrics]]
    rows = []
    for run in runs:
        summary = run.summary()
        dice = summary.get("dice", {})
        rows.append([run.name, str(run.last_step), str(len(run.final_pairs())),
                     *[_fmt(dice.get(k, float("nan"))) for k in ("mean", "std", "p30", "low30_mean")],
                     *[_fmt(summary.get(m, {}).get("mean", float("nan"))) for m in metrics]])
    return header, rows


def organ_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the mean Dice per organ (rows) and run (columns)."""
    per_run = [run.organ_dice() for run in runs]
    organs = list(dict.fromkeys(organ for organs in per_run for organ in organs))
    rows = [[organ, *[_fmt(float(np.mean(d[organ]))) if d.get(organ) else "n/a" for d in per_run]]
            for organ in organs]
    return ["organ", *[run.name for run in runs]], rows


def wilcoxon_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired tests of every run against the first (differences: run - first)."""
    header = ["run", "common pairs", "mean Dice difference", "W", "p-value"]
    rows = []
    for run in runs[1:]:
        test = paired_wilcoxon(runs[0], run)
        rows.append([run.name, str(test["n"]), _fmt(test["mean_difference"]), _fmt(test["statistic"], 1),
                     _fmt(test["p_value"])])
    return header, rows


def wilcoxon_title(runs: list[Run]) -> str:
    return f"Paired Wilcoxon signed-rank test of the per-pair Dice against {runs[0].name} (two-sided, common pairs)"


# ----------------------------------------------------------------------------- figure
def report_figure(runs: list[Run], with_tables: bool):
    """Matplotlib figure: per-organ Dice box plots (left) and validation curves (right); the
    aggregate and Wilcoxon tables under them when ``with_tables``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_run = [run.organ_dice() for run in runs]
    organs = list(dict.fromkeys(organ for organs in per_run for organ in organs))
    tables = []
    if with_tables:
        tables.append(("Learn2Reg aggregates of the per-pair Dice (last validation)", *aggregate_table(runs)))
        if len(runs) > 1:
            tables.append((wilcoxon_title(runs), *wilcoxon_table(runs)))
    table_heights = [0.3 * (len(rows) + 1) + 0.4 for _, _, rows in tables]
    fig = plt.figure(figsize=(max(13.0, 5.0 + 0.45 * len(organs) * len(runs)), 6.0 + sum(table_heights)),
                     layout="constrained")
    grid = fig.add_gridspec(1 + len(tables), 2, width_ratios=[2.2, 1], height_ratios=[6.0, *table_heights])
    boxes, curves = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    colours = plt.get_cmap("tab10").colors
    box_width = 0.8 / len(runs)
    for index, (run, organ_dice) in enumerate(zip(runs, per_run)):
        colour = colours[index % len(colours)]
        positions = [o + (index - (len(runs) - 1) / 2) * box_width for o in range(len(organs))]
        boxes.boxplot([organ_dice.get(organ) or [float("nan")] for organ in organs], positions=positions,
                      widths=box_width * 0.9, patch_artist=True, manage_ticks=False, medianprops={"color": "black"},
                      boxprops={"facecolor": colour, "alpha": 0.6}, flierprops={"markersize": 3})
        steps, dice = run.curve()
        curves.plot(steps, dice, marker="o", color=colour, label=run.name)
    rotate = len(organs) > 4
    boxes.set_xticks(range(len(organs)), organs, rotation=40 if rotate else 0, ha="right" if rotate else "center")
    boxes.set(ylim=(0.0, 1.0), ylabel="Dice per pair (last validation)", title="Dice per organ")
    boxes.grid(axis="y", alpha=0.3)
    curves.set(xlabel="training step", ylabel="val/dice (mean over pairs)", title="Validation curves")
    curves.grid(alpha=0.3)
    curves.legend(fontsize="small")
    for row, (title, header, rows) in enumerate(tables, start=1):
        axis = fig.add_subplot(grid[row, :])
        axis.axis("off")
        axis.set_title(title, loc="left", fontsize=10)
        first = 0.24
        widths = [first] + [(1.0 - first) / (len(header) - 1)] * (len(header) - 1)
        table = axis.table(cellText=rows, colLabels=header, colWidths=widths, cellLoc="center", bbox=[0, 0, 1, 1])
        table.auto_set_font_size(False)
        table.set_fontsize(9)
    return fig


def figure_png(runs: list[Run], with_tables: bool) -> bytes:
    """The report figure as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = report_figure(runs, with_tables)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(runs: list[Run]) -> str:
    """One self-contained HTML page: runs, the figure (base64 PNG), aggregates, organs, tests."""
    png = base64.b64encode(figure_png(runs, with_tables=False)).decode("ascii")
    sections = [
        ("Runs", _html_table(["run", "directory", "validations", "last step"],
                             [[r.name, str(r.path), str(len({x['step'] for x in r.records})), str(r.last_step)]
                              for r in runs])),
        ("Dice per organ and validation curves", f'<img alt="Dice per organ and validation curves" '
                                                 f'src="data:image/png;base64,{png}">'),
        ("Learn2Reg aggregates (last validation, per-pair Dice)", _html_table(*aggregate_table(runs))),
        ("Mean Dice per organ (last validation)", _html_table(*organ_table(runs))),
    ]
    if len(runs) > 1:
        sections.append((wilcoxon_title(runs), _html_table(*wilcoxon_table(runs))))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:0.5em 0}"
             "td,th{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>regframe compare</title>"
            f"<style>{style}</style></head><body><h1>regframe compare</h1>{body}</body></html>\n")


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories holding val_pairs.jsonl (runs/<project>/<run id> or Lightning version folders)")
    parser.add_argument("--out", type=Path, required=True,
                        help="report file: .html (page with the figure and tables) or .png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def main(args: argparse.Namespace) -> int:
    """Check the output and every run first, then write the report."""
    out: Path = args.out
    if out.suffix.lower() not in (".html", ".png"):
        raise RegframeInputError(f"--out {out}: the report must end in .html or .png")
    if out.exists() and not args.overwrite:
        raise RegframeInputError(f"--out {out} exists (pass --overwrite to replace it)")
    if out.parent.exists() and not out.parent.is_dir():
        raise RegframeInputError(f"--out {out}: {out.parent} is not a directory")
    runs = load_runs(args.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        out.write_bytes(figure_png(runs, with_tables=True))
    else:
        out.write_text(html_report(runs))
    header, rows = aggregate_table(runs)
    print(" | ".join(header[:7]))
    for row in rows:
        print(" | ".join(row[:7]))
    print(f"report written to {out}")
    return 0
