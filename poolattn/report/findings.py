"""The report's leading section: what holds. Per category, in plain sentences: which design differences hold
across seeds (effect, CI, Holm-adjusted p), which are below what this budget can detect (with the minimum
detectable effect), the budget's choice, and, with one seed, that the tests are about these trained models."""
from __future__ import annotations

from typing import Any


def _pts(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:+.2f}"


def _abs(x: float | None) -> str:
    return "—" if x is None or x != x or x == float("inf") else f"{100 * x:.2f}"


def _p(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2g}" if x >= 0.001 else f"{x:.1e}")


def sentences(data: dict) -> dict[str, Any]:
    """{"lead": [...], "categories": {category: {"holds": [...], "undetectable": [...], "open": [...]}}}."""
    sl, alpha = data["seed_level"], data["settings"]["alpha"]
    conf = int(100 * data["settings"]["confidence"])
    lead = []
    if sl["n_seeds"] <= 1:
        lead.append("**One training seed: these tests are about these trained models, not about the designs.** "
                    "Another seed can rank the designs differently; set `seeds: [42, 43, 44]` (or a "
                    "`budget_minutes` that fits several seeds) before trusting a ranking of designs.")
    else:
        lead.append(f"Designs compared across {sl['n_seeds']} training seeds (seed s of every design saw the same "
                    f"data order): effects are means over seeds of the paired difference, {conf}% CIs and p-values "
                    f"carry both seed and item variance, Holm over design pairs.")
    budget = data.get("budget") or {}
    if budget.get("choice"):
        c = budget["choice"]
        lead.append(f"Budget: {budget['budget_minutes']:g} min on this machine; the chooser picked {c['steps']} "
                    f"steps x {c['seeds']} seeds (estimated {c['estimated_minutes']:.0f} min); at that budget a "
                    f"category-average difference smaller than about {_abs(c.get('mde'))} points is not "
                    f"detectable (80% power{', ' + c['mde_source'] if c.get('mde_source') else ''}).")
    cats: dict[str, dict[str, list[str]]] = {}
    for r in sl["categories"]:
        a, b, diff = (r["a"], r["b"], r["diff"]) if r["diff"] >= 0 else (r["b"], r["a"], -r["diff"])
        lo, hi = (r["ci_low"], r["ci_high"]) if r["diff"] >= 0 else (-r["ci_high"], -r["ci_low"])
        row = cats.setdefault(r["category"], {"holds": [], "undetectable": [], "open": []})
        if r["p_holm"] is not None and r["p_holm"] < alpha:
            row["holds"].append(f"{b} beats {a} by {_pts(diff)} ({conf}% CI {_pts(lo)} to {_pts(hi)}, "
                                f"Holm p={_p(r['p_holm'])})")
        elif diff <= r["mde"]:
            row["undetectable"].append(f"{b} vs {a}: {_pts(diff)}, below the {_abs(r['mde'])} this run can detect")
        else:
            row["open"].append(f"{b} vs {a}: {_pts(diff)} ({conf}% CI {_pts(lo)} to {_pts(hi)}), not significant "
                               f"after Holm (p={_p(r['p_holm'])})")
    return {"lead": lead, "categories": cats}


def what_holds(doc, data: dict) -> None:
    """Write the leading section into a render._Doc."""
    doc.h(2, "What holds")
    if len(data["tested"]) < 2:  # nothing to compare: say so instead of a seed caveat about a ranking
        doc.p(f"One design ({', '.join(data['tested']) or 'none'}): no comparison between designs to test. The "
              f"tables below give its scores beside the reference rows.")
        return
    s = sentences(data)
    sl = data["seed_level"]
    for line in s["lead"]:
        doc.p(line)
    items = []
    for g, row in s["categories"].items():
        parts = []
        if row["holds"]:
            parts.append(("holds: " if sl["level"] == "design" else "holds for these trained models: ")
                         + "; ".join(row["holds"]) + ".")
        else:
            parts.append("no design difference holds.")
        if row["open"]:
            parts.append("Detectable size but not significant: " + "; ".join(row["open"]) + ".")
        if row["undetectable"]:
            parts.append("Below what this budget can detect: " + "; ".join(row["undetectable"]) + ".")
        items.append(f"**{g}**: " + " ".join(parts))
    doc.ul(items or ["no design pair has per-item results on a common task"])
    if sl["categories"]:
        doc.p("Variance components of each category-average difference (x100): seed SD = SD over seeds of the "
              "paired difference; item SE = sampling error of the test items; MDE = smallest difference detected "
              "with 80% power at these seeds and items.")
        rows = [[r["category"], f"{r['b']} - {r['a']}", _pts(r["diff"]), _abs(r["seed_sd"]), _abs(r["item_se"]),
                 _abs(r["mde"]), _p(r["p_value"]), _p(r["p_holm"])] for r in sl["categories"]]
        doc.table(["category", "pair", "effect", "seed SD", "item SE", "MDE", "p", "Holm p"], rows)
