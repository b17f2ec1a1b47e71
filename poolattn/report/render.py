"""Rendering a report's analysis dict: one Markdown document (the leading section from poolattn.report.findings,
then tables), and the HTML page rendered from that Markdown by markdown-it-py, with the CSS inline and the PNGs
as data URIs (self-contained)."""
from __future__ import annotations

import base64
import html
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from markdown_it import MarkdownIt

from ..stats.multiple import WilcoxonResult, significance
from ..stats.paired import PairedResult
from .analysis import ALL, oriented
from .findings import what_holds
from .folder import design_table

UP, DOWN, RAW = "▲", "▼", "°"


class _Doc:
    def __init__(self):
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], numeric: bool = True):
        """numeric: right-align every column but the first."""
        self.blocks.append(("table", (header, rows, numeric)))

    def img(self, path: Path, alt: str):
        self.blocks.append(("img", (path, alt)))

    def code(self, text: str, lang: str = ""):
        self.blocks.append(("code", (text, lang)))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "ul":
                out.append("\n".join(f"- {i}" for i in v))
            elif kind == "table":
                esc = lambda s: str(s).replace("|", "\\|")
                header, rows, numeric = v
                out.append("\n".join(["| " + " | ".join(map(esc, header)) + " |",
                                      "|" + "|".join("---:" if i and numeric else "---" for i in range(len(header)))
                                      + "|"]
                                     + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]))
            elif kind == "img":
                out.append(f"![{v[1]}]({v[0].name})")
            elif kind == "code":
                out.append(f"```{v[1]}\n{v[0].rstrip()}\n```")
        return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}th{background:#f3f4f6}
td[style],th[style]{white-space:nowrap}.scroll{overflow-x:auto}
tr:nth-child(even) td{background:#fafafa}
img{max-width:100%}pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.82em}
code{font-family:ui-monospace,Menlo,Consolas,monospace}p,li{max-width:80em}"""


def _f(x: float | None, sign: bool = False) -> str:
    return "—" if x is None or not np.isfinite(x) else (f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}")


def _p(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2g}" if x >= 0.001 else f"{x:.1e}")


def _mark(sig: int, r: PairedResult | WilcoxonResult | None = None, alpha: float = 0.05) -> str:
    """▲/▼ significant after Holm; ° (with r) significant before Holm only."""
    if sig:
        return {1: " " + UP, -1: " " + DOWN}[sig]
    return " " + RAW if r is not None and r.p_value is not None and r.p_value < alpha else ""


def _bold_best(values: list[float | None], cells: list[str]) -> list[str]:
    finite = [v for v in values if v is not None]
    best = max(finite) if finite else None
    return [f"**{c}**" if v is not None and v == best else c for v, c in zip(values, cells)]


def render(data: dict, plots: dict[str, Path]) -> _Doc:
    ref, alpha, cols = data["reference"], data["settings"]["alpha"], data["designs"] + data["references"]
    label = lambda c: data["labels"].get(c, c)  # reference rows: "baseline (untrained)", "x (peer)"
    n_tests, n_wil = len(data["paired_tests"]), sum(1 for w in data["wilcoxon"] if w["reachable"])
    scope = ("" if data.get("per_run_seed") is None else
             f" These tests compare single trained runs of seed {data['per_run_seed']} only (one run per design); "
             f"the design-level answer over all seeds is in What holds.")
    doc = _Doc()
    doc.h(1, f"Experiment report: {data['experiment']}")
    what_holds(doc, data)
    doc.p(f"{len(data['designs'])} runs, {len(data['tasks'])} tasks; generated {data['generated']} from "
          f"`{data['folder']}`. Scores are main scores x100 (MTEB convention).")

    designs_cfg = design_table(data["config"])
    if designs_cfg:
        cfg = data["config"]
        default_seed = (cfg.get("seeds") or [cfg.get("seed", "")])[0]

        levers = any(c.get("train") for c in designs_cfg.values())
        base_backbone = (cfg.get("base") or {}).get("backbone")
        other = sorted(d for d, c in designs_cfg.items() if d in data["designs"] and c.get("backbone")
                       and c["backbone"] != base_backbone)

        def row(d):
            c = designs_cfg.get(d, {})
            seed = c.get("seed") if c.get("seed") is not None else default_seed
            return [d, str(c.get("pooling", "")), str(c.get("attention", "")),
                    json.dumps(c.get("pooling_kwargs") or {}), str(seed)] + (
                       [str(c.get("backbone") or base_backbone or "")] if other else []) + (
                       [json.dumps(c.get("train") or {})] if levers else [])
        doc.h(2, "Designs")
        doc.table(["design", "pooling", "attention", "pooling kwargs", "seed"] + (["backbone"] if other else []) + (
            ["training changes"] if levers else []), [row(d) for d in data["designs"]], numeric=False)
        if other:
            doc.p("**Outside the paper's protocol:** " + ", ".join(other) + " use another backbone than the "
                  f"experiment's {base_backbone} (the paper compares designs on one base model).")
        distilled = sorted(d for d, c in designs_cfg.items() if d in data["designs"] and (
            (c.get("train") or {}).get("distill") or (cfg.get("train") or {}).get("distill")))
        if distilled:
            doc.p("**Outside the paper's protocol:** " + ", ".join(distilled) + " trained with a distillation "
                  "term from a teacher model beside InfoNCE (the paper trains with InfoNCE only).")

    training = data.get("training") or {}
    if training:
        doc.h(2, "Training")
        rows = []
        for c in cols:
            t = training.get(c, {})
            steps = (f"{t['steps']} / {t['max_steps']}" if "steps" in t else
                     "untrained" if c not in data["references"] or c == data["baseline"] else "not trained here")
            if "steps" in t and t["steps"] < t["max_steps"]:
                steps += " (stopped early)"
            mins = lambda k: f"{t[k] / 60:.1f}" if t.get(k) is not None else "—"
            loss = (f"{t['loss_first']:.3f} → {t['loss_last']:.3f}" if "loss_first" in t else "—")
            train_min = mins("elapsed_s")
            if t.get("adapt_elapsed_s") is not None:  # the adaptation stage ran first: its time is training too
                total = (t.get("elapsed_s") or 0) + t["adapt_elapsed_s"]
                train_min = f"{total / 60:.1f} (adapt {t['adapt_steps']} steps: {t['adapt_elapsed_s'] / 60:.1f})"
            rows.append([label(c), steps, loss, train_min, mins("eval_seconds")])
        doc.table(["design", "steps", "loss (first 5 → last 5 steps)", "training (min)", "evaluation (min)"], rows)
        machines = {}
        for c in cols:
            t = training.get(c, {})
            if t.get("cpu"):
                kind = t["cpu"] + (" + " + ", ".join(t["gpus"]) if t.get("gpus") else
                                   "" if t.get("cpu_fast_bf16") is None else
                                   ", fast bf16" if t["cpu_fast_bf16"] else ", no fast bf16 (fp32)")
                if t.get("allocator"):  # tcmalloc trains 1.6x faster than glibc's malloc (poolattn.allocator)
                    kind += f", {t['allocator']} malloc"
                machines.setdefault(kind, []).append(c)
        if len(machines) > 1:  # a folder resumed on other machines: times (and the auto dtype) differ between them
            doc.p("**Runs of this folder ran on different machines** (their times compare machines, not designs; "
                  "`dtype: auto` is bf16 only with fast bf16): " + "; ".join(
                      f"{kind}: {', '.join(runs)}" for kind, runs in machines.items()) + ".")
        total = sum((t.get("train_seconds") or 0) + (t.get("eval_seconds") or 0) for t in training.values())
        if total:
            doc.p(f"Training and evaluation took {total / 60:.1f} min in all (runner's wall time, this folder's "
                  f"runs; a resumed run counts only its last invocation).")

    doc.h(2, "Scores per task")
    tests = len(data["tested"]) >= 2  # one design: nothing to test, no test sections
    doc.p("Bold: best in the row." + (
        f" {UP}/{DOWN}: significantly better/worse than the reference **{ref}** on that task (paired permutation "
        f"test on per-item scores, Holm over all {n_tests} per-dataset comparisons, alpha={alpha:g}).{scope}"
        if tests else " One design: no tests between designs.") + peers_note(data))
    rows = []
    for t, info in data["tasks"].items():
        vals = [info["scores"][c] for c in cols]
        cells = []
        for c, v in zip(cols, vals):
            r = oriented(data["paired_tests"], "task", ref, c, t, PairedResult) if c != ref else None
            cells.append(_f(v) + (_mark(significance(r, alpha)) if r else ""))
        rows.append([t, info["type"]] + _bold_best(vals, cells))
    secs = [sum(info["seconds"].get(c) or 0 for info in data["tasks"].values()) for c in cols]
    rows.append(["evaluation time (min)", ""] + [f"{s / 60:.1f}" for s in secs])
    doc.table(["task", "type"] + [label(c) for c in cols], rows)

    doc.h(2, "Category averages")
    rows = []
    for g, info in data["categories"].items():
        vals = [info["mean"][c] for c in cols]
        rows.append([g, str(len(info["tasks"]))] + _bold_best(vals, [_f(v) for v in vals]))
    doc.table(["category", "tasks"] + [label(c) for c in cols], rows)
    doc.img(plots["categories"], "category average by design")

    if data.get("replicates"):
        doc.h(2, "Mean over seeds")
        doc.p("Each design was trained once per seed; cell = mean ± standard deviation over seeds of the category "
              "average (x100); the time rows: mean (range) over seeds of the runner's wall time per run. The per-run "
              "tests compare one seed's runs; What holds tests the designs over seeds.")
        names = list(data["replicates"])
        rows = [[g] + [f"{_f(r['mean'][g])} ± {_f(r['sd'][g])}" if r["mean"].get(g) is not None else "—"
                       for r in data["replicates"].values()] for g in data["categories"]]
        for key, what in (("train_seconds", "training (min)"), ("eval_seconds", "evaluation (min)")):
            # the runner's wall time per run (timing.json; an adaptation stage counts as training)
            mins = [[training[run][key] / 60 for run in r["runs"] if (training.get(run) or {}).get(key) is not None]
                    for r in data["replicates"].values()]
            if any(mins):
                rows.append([what] + [f"{np.mean(m):.1f} ({min(m):.1f}-{max(m):.1f})" if m else "—" for m in mins])
        doc.table(["category"] + [f"{n} (n={len(data['replicates'][n]['runs'])})" for n in names], rows)

    if (data.get("widths") or {}).get("rows"):
        _widths(doc, data)

    others = [d for d in data["tested"] if d != ref]
    if others:
        doc.h(2, f"Differences against {ref}")
        doc.p(f"metric(design) - metric({ref}) x100 recomputed from per-item scores, "
              f"[{int(100 * data['settings']['confidence'])}% paired bootstrap CI], Holm-adjusted p; "
              f"{UP}/{DOWN} significant at alpha={alpha:g} after Holm, {RAW} only before it.{scope}")
        rows = []
        for t in data["tasks"]:
            row = [t]
            for d in others:
                r = oriented(data["paired_tests"], "task", ref, d, t, PairedResult)
                row.append("—" if r is None else f"{_f(r.diff, True)} [{_f(r.ci_low, True)}, {_f(r.ci_high, True)}] "
                                                 f"p={_p(r.p_holm)}{_mark(significance(r, alpha), r, alpha)}")
            rows.append(row)
        doc.table(["task"] + others, rows)
        doc.img(plots["differences"], f"per-task differences against {ref}")

    if tests:
        _family_sections(doc, data, alpha, n_wil, scope)
        _method(doc, data)
    _closing(doc, data)
    return doc


def _widths(doc: _Doc, data: dict) -> None:
    w = data["widths"]
    doc.h(2, "Truncated widths")
    doc.p(f"Every row scored again with its vectors cut to the first {', '.join(map(str, w['dimensions']))} "
          "dimensions and renormalised (eval.dimensions). Cell = category average x100, mean ± SD over the "
          "design's seeds where it has several. trained: the design's loss covered that width (matryoshka_dims); "
          "otherwise the cut is plain truncation.")
    cats = list(data["categories"])
    rows = []
    for r in w["rows"]:
        cells = [_f(r["mean"][g]) + (f" ± {_f(r['sd'][g])}" if r["sd"].get(g) is not None else "") for g in cats]
        rows.append([data["labels"].get(r["design"], r["design"]), str(r["dimensions"] or "full"),
                     "yes" if r["trained"] else "no", str(r["runs"])] + cells)
    doc.table(["design", "width", "trained", "runs"] + cats, rows)


def _family_sections(doc: _Doc, data: dict, alpha: float, n_wil: int, scope: str) -> None:
    """The tests over datasets between every pair of tested designs: Wilcoxon per category, win/tie/loss."""
    groups = list(data["categories"])
    doc.h(2, "Wilcoxon signed-rank test across datasets")
    doc.p(f"The paper's test: for each pair, the per-dataset main scores of a category; cell = mean difference "
          f"(row's first design minus second) x100, Holm-adjusted p over the {n_wil} tests that can reach "
          f"alpha={alpha:g}; {UP}/{DOWN} significant after Holm, {RAW} only before it. With n <= 5 datasets the "
          f"exact two-sided test cannot reach p<0.05 (minimum p = 2/2^n).{scope}")
    rows, footnotes = [], []

    def footnote(text):
        if text not in footnotes:
            footnotes.append(text)
        return f"[{footnotes.index(text) + 1}]"

    for a, b in itertools.combinations(data["tested"], 2):
        row = [f"{b} - {a}"]
        for g in groups:
            w = oriented(data["wilcoxon"], "category", a, b, g, WilcoxonResult)
            if w is None:
                row.append("—")
            elif w.p_value is None or not w.reachable:
                row.append(f"{_f(w.mean_diff, True)} {footnote(w.note)}")
            else:
                n_note = "" if w.n == len(data["categories"][g]["tasks"]) else f"n={w.n}, "
                row.append(f"{_f(w.mean_diff, True)} ({n_note}p={_p(w.p_value)}, Holm {_p(w.p_holm)})"
                           f"{_mark(significance(w, alpha), w, alpha)}")
        rows.append(row)
    doc.table(["pair"] + [f"{g} (n={len(data['categories'][g]['tasks'])})" for g in groups], rows)
    doc.ul([f"[{i + 1}] {n}" for i, n in enumerate(footnotes)])

    doc.h(2, "Win / tie / loss")
    doc.p(f"Row design against column design over datasets: wins/ties/losses = significantly better / not "
          f"significant / significantly worse (per-dataset tests, Holm). {UP}/{DOWN}: the row is significantly "
          f"better/worse over {ALL} by the Wilcoxon test (Holm).{scope}")
    rows = []
    for r_ in data["tested"]:
        row = [r_]
        for c in data["tested"]:
            if c == r_:
                row.append("·")
                continue
            w, t, l_ = data["win_tie_loss"][r_][c]
            wil = oriented(data["wilcoxon"], "category", c, r_, ALL, WilcoxonResult)
            row.append(f"{w}/{t}/{l_}" + (_mark(significance(wil, alpha)) if wil else ""))
        rows.append(row)
    doc.table(["row vs column"] + data["tested"], rows)


def _method(doc: _Doc, data: dict) -> None:
    doc.h(2, "Method")
    doc.p(f"Per-dataset tests compare two designs on the same items: the effect is the task metric of B minus A "
          f"(Spearman for STS, average precision for pair classification, mean nDCG@10 for retrieval and "
          f"reranking, accuracy for classification, mean V-measure over runs for clustering), recomputed from the "
          f"per-item scores. p-values come from a paired permutation test (A's and B's predictions swapped per item, "
          f"{data['settings']['n_resamples']} permutations; exact enumeration when all swap patterns fit, else the "
          f"normal tail of the permutation null), CIs from a paired percentile bootstrap over items "
          f"({data['settings']['n_resamples']} resamples, seed {data['settings']['seed']}). Holm-Bonferroni "
          f"controls the family-wise error rate within each family (per-dataset tests; Wilcoxon tests).")


def _closing(doc: _Doc, data: dict) -> None:
    """Notes, the configuration and the environment the run recorded."""
    doc.h(2, "Notes")
    doc.ul(data["notes"] or ["none"])

    doc.h(2, "Configuration")
    doc.code(yaml.safe_dump(data["config"], sort_keys=False) if data["config"] else "(experiment.yaml missing)",
             "yaml")
    doc.h(2, "Environment")
    env = data["environment"]
    if env:
        rows = [[k, ", ".join(v) if isinstance(v, list) else str(v)] for k, v in env.items() if k != "packages"]
        rows += [[k, str(v)] for k, v in (env.get("packages") or {}).items()]
        doc.table(["", "value"], [[k, v or "none"] for k, v in rows], numeric=False)
    else:
        doc.p("not recorded (environment.json missing)")


def peers_note(data: dict) -> str:
    """The sentence that says what the peer columns are (none without peers)."""
    peers = [r for r in data["references"] if r != data["baseline"]]
    if not peers:
        return ""
    tested = "" if any(r in data["tested"] for r in peers) else ", and not tested against the designs"
    return (f" Peer models ({', '.join(data['labels'][r] for r in peers)}) are reference rows like the untrained "
            f"baseline: evaluated as they are on the same tasks, not trained here, not designs{tested}.")


def to_html(markdown: str, title: str, folder: Path) -> str:
    """The Markdown as a self-contained HTML page: tables and code from markdown-it-py, images inlined."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(self, tokens, idx, options, env):
        tok = tokens[idx]
        path = folder / tok.attrGet("src")
        src = f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" if path.exists() else ""
        return f'<figure><img alt="{html.escape(tok.content)}" src="{src}"></figure>'
    md.add_render_rule("image", image)
    body = md.render(markdown).replace("<table>", '<div class="scroll"><table>').replace("</table>",
                                                                                         "</table></div>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")
