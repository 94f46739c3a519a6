"""Issue 14's aim, checked from the runs, not typed: on the CH-SIMSv2 trimodal benchmark (`simsv2-scores`), does the
best dynamic model beat the linear stacker and the static variants by more than one standard deviation, on MAE and
on Corr?

For each text input (the transcript through the text backbone; `pred_t`, the released text model's score), the
dynamic models are DAF, KuDA, DPDF-LQ and CrossSent (transcript only: it reads token ids), each with the variants that
switch its dynamic part off (DAF static, KuDA static attention / without knowledge, DPDF-LQ without the path gate,
CrossSent without GMRA); KuDA with its settings from before issue 13 (`old-preset`) counts as a dynamic row too. The best dynamic model (lowest mean test MAE over seeds, among rows with 3 seeds or more) is compared with
- the linear stacker of the three released scores fitted on valid (`scripts/stacker_reference.py`; one
  deterministic fit, no spread): the margin must exceed the dynamic model's own std over seeds;
- every static row of the same input (early, late and attention fusion, and the static variants): the margin must
  exceed the larger of the two stds.

    .venv/bin/python scripts/trimodal_verdict.py [runs/foundation/simsv2-scores]   # -> reports/simsv2_scores_verdict.{md,json}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynafuse.analysis.summary import find_runs, group_runs, md_table
from dynafuse.errors import run_script
from dynafuse.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC = ("daf", "kuda", "dpdf_lq", "crosssent")
STATIC_MODELS = ("early_fusion", "late_fusion", "attention_fusion")
STATIC_VARIANTS = {"static", "static-attention", "no-knowledge", "wo-gate", "wo-gmra"}  # after the pred_t prefix
STACKER = "linear stacker of the three scores, fitted on valid"
INPUTS = ("transcript", "pred_t")  # the text inputs; a pred_t run's variant starts with "pred_t"


def input_of(variant: str) -> str:
    return "pred_t" if variant.startswith("pred_t") else "transcript"


def setting(g: dict) -> str:
    """A group's variant without the text-input prefix (`pred_t-static` -> `static`)."""
    return g["variant"].removeprefix("pred_t").lstrip("-")


def role(g: dict) -> str | None:
    """'dynamic', 'static' or None (an ablation that is neither, e.g. DPDF-LQ without one path)."""
    v = setting(g)
    if g["model"] in DYNAMIC and v in ("", "old-preset"):
        return "dynamic"
    if (g["model"] in STATIC_MODELS and not v) or (g["model"] in DYNAMIC and v in STATIC_VARIANTS):
        return "static"
    return None


def preset_variant(g: dict) -> bool:
    """A dynamic row trained with other settings than its static variants (KuDA's `old-preset`): no like-for-like
    switched-off row exists for it, so it is left out of the model-by-model pairs."""
    return setting(g) == "old-preset"


def name(g: dict) -> str:
    return g["model"] + (f" [{g['variant']}]" if g["variant"] else "")


def ms(g: dict, key: str) -> tuple[float, float]:
    return g["agg"][key]["mean"], g["agg"][key]["std"]


def compare(best: dict, other_mae: tuple[float, float], other_corr: tuple[float, float], own_std_only: bool) -> dict:
    (bm, bs), (bc, bcs) = ms(best, "mae"), ms(best, "corr")
    (om, os_), (oc, ocs) = other_mae, other_corr
    need_mae, need_corr = (bs, bcs) if own_std_only else (max(bs, os_), max(bcs, ocs))
    return {"d_mae": om - bm, "need_mae": need_mae, "d_corr": bc - oc, "need_corr": need_corr,
            "beats": (om - bm > need_mae) and (bc - oc > need_corr)}


def verdict(roots: list[str], reference: Path) -> dict:
    groups = [g for g in group_runs(find_runs(roots, "test")) if g["dataset"] == "simsv2-scores"
              and g["task"] == "regression"]
    stacker = next(r["metrics"] for r in json.loads(reference.read_text()) if r["row"] == STACKER)
    out = {}
    for inp in INPUTS:
        mine = [g for g in groups if input_of(g["variant"]) == inp]
        dyn = [g for g in mine if role(g) == "dynamic"]
        if not dyn:
            continue
        # a row still being run (fewer than 3 seeds) has no std worth the name: it cannot be the best yet
        best = min([g for g in dyn if g["n_seeds"] >= 3] or dyn, key=lambda g: g["agg"]["mae"]["mean"])
        rows = [{"against": f"{STACKER} (reference)", "mae": stacker["mae"], "corr": stacker["corr"], "seeds": "-",
                 **compare(best, (stacker["mae"], 0.0), (stacker["corr"], 0.0), True)}]
        for g in sorted((g for g in mine if role(g) == "static"), key=lambda g: g["agg"]["mae"]["mean"]):
            rows.append({"against": name(g), "mae": ms(g, "mae")[0], "corr": ms(g, "corr")[0], "seeds": g["n_seeds"],
                         **compare(best, ms(g, "mae"), ms(g, "corr"), False)})
        # each dynamic model against its own switched-off variants (the papers' claim, model by model)
        pairs = [{"dynamic": name(d), "against": name(g), "seeds": f"{d['n_seeds']} / {g['n_seeds']}",
                  "mae": ms(g, "mae")[0], "corr": ms(g, "corr")[0], **compare(d, ms(g, "mae"), ms(g, "corr"), False)}
                 for d in dyn if not preset_variant(d)
                 for g in mine if role(g) == "static" and g["model"] == d["model"]]
        out[inp] = {"best": name(best), "seeds": best["n_seeds"], "mae": ms(best, "mae"), "corr": ms(best, "corr"),
                    "pairs": pairs,
                    "dynamic": {name(g): {"mae": ms(g, "mae"), "corr": ms(g, "corr"), "seeds": g["n_seeds"]}
                                for g in dyn},
                    "rows": rows, "beats_all": all(r["beats"] for r in rows)}
    return out


def markdown(v: dict, command: str) -> str:
    md = ["# CH-SIMSv2 trimodal: does the best dynamic model beat the stacker and the static variants?", "",
          f"Generated by `{command}` from the finished runs (test split, mean ± std over seeds). A margin counts when "
          "it exceeds one standard deviation (the larger of the two rows'; the stacker has none, so the dynamic "
          "model's own). ΔMAE > 0 and ΔCorr > 0 mean the dynamic model is better.", ""]
    for inp, r in v.items():
        text = "the transcript through the text backbone" if inp == "transcript" else "`pred_t` (the released text model's score)"
        (m, s), (c, cs) = r["mae"], r["corr"]
        md += [f"## Text input: {text}", "",
               f"Best dynamic model: **{r['best']}**, MAE {m:.3f} ± {s:.3f}, Corr {c:.3f} ± {cs:.3f} "
               f"({r['seeds']} seed{'s' if r['seeds'] != 1 else ''}). Beats every row below by more than one std on both: "
               f"**{'yes' if r['beats_all'] else 'no'}**.", ""]
        header = ["against", "seeds", "MAE", "Corr", "ΔMAE (needed)", "ΔCorr (needed)", "beaten"]
        body = [[x["against"], str(x["seeds"]), f"{x['mae']:.3f}", f"{x['corr']:.3f}",
                 f"{x['d_mae']:+.3f} ({x['need_mae']:.3f})", f"{x['d_corr']:+.3f} ({x['need_corr']:.3f})",
                 "yes" if x["beats"] else "no"] for x in r["rows"]]
        md += [md_table(header, body), ""]
        others = ", ".join(f"{k} {d['mae'][0]:.3f} / {d['corr'][0]:.3f}" for k, d in r["dynamic"].items())
        md += [f"Every dynamic model (MAE / Corr): {others}.", ""]
        if r["pairs"]:
            md += ["Each dynamic model against its own variants with the dynamic part switched off (a row trained with "
                   "other settings, KuDA [old-preset], has no such variant and is not paired):", ""]
            dyn = r["dynamic"]
            body = [[x["dynamic"], x["against"], x["seeds"], f"{dyn[x['dynamic']]['mae'][0]:.3f} / {x['mae']:.3f}",
                     f"{dyn[x['dynamic']]['corr'][0]:.3f} / {x['corr']:.3f}",
                     f"{x['d_mae']:+.3f} ({x['need_mae']:.3f})", f"{x['d_corr']:+.3f} ({x['need_corr']:.3f})",
                     "yes" if x["beats"] else "no"] for x in r["pairs"]]
            md += [md_table(["dynamic", "switched off", "seeds", "MAE", "Corr", "ΔMAE (needed)", "ΔCorr (needed)",
                             "dynamic better by > 1 std on both"], body), ""]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", default=["runs/foundation/simsv2-scores"])
    ap.add_argument("--reference", default=str(ROOT / "reports" / "simsv2_scores_reference.json"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "simsv2_scores_verdict"))
    a = ap.parse_args()
    result = verdict(a.roots, Path(a.reference))
    atomic_write_json(Path(a.out + ".json"), result)
    atomic_write_text(Path(a.out + ".md"), markdown(result, "python scripts/trimodal_verdict.py"))
    print(markdown(result, "python scripts/trimodal_verdict.py"))


if __name__ == "__main__":
    run_script(main)
