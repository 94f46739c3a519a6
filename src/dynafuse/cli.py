"""`dynafuse` command line: models, datasets, train, eval."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DynafuseError


def _table(rows: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=True, header_style="bold")
    t.add_column("name")
    t.add_column("description")
    for k, v in rows.items():
        t.add_row(k, v)
    Console().print(t)


def print_metrics(metrics: dict, title: str = "", anchors: list[dict] | None = None) -> None:
    """Metrics as rows, splits (and any published reference rows) as columns."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title or None)
    t.add_column("metric")
    for split in metrics:
        t.add_column(split, justify="right")
    for a in anchors or []:
        t.add_column(f"{a['model']} (published)", justify="right", style="dim")
    for k in (k for k in metrics["test"] if k != "n"):
        cells = [f"{metrics[s][k]:.3f}" for s in metrics]
        cells += ["" if a.get(k) is None else f"{a[k]:g}" for a in anchors or []]
        t.add_row(k, *cells)
    Console().print(t)


def cmd_models(_):
    from .models import list_models

    _table(list_models())


def cmd_datasets(_):
    from .data import DESCRIPTIONS
    from .data.formats import READERS

    _table({**DESCRIPTIONS, **{f"{k}:PATH": f"a user's {k.upper()} pickle (needs --allow-pickle)" for k in READERS}})


def cmd_train(a):
    from .config import build_config
    from .training import train

    overrides = list(a.overrides)
    overrides += [f"train.seed={a.seed}", f"model.task={a.task}"] if a.task else [f"train.seed={a.seed}"]
    if a.data_dir:
        overrides.append(f"data.data_dir={a.data_dir}")
    if a.allow_pickle:
        overrides.append("data.options.allow_pickle=true")
    cfg = build_config(a.model, a.dataset, overrides, a.config)
    out = Path(a.out or f"runs/{a.model}-{a.dataset.replace(':', '_').replace('/', '_')}-s{a.seed}")
    metrics = train(cfg, out, resume=a.resume, force=a.force)
    if metrics:
        print_metrics(metrics, f"{a.model} on {a.dataset} (seed {a.seed}) -> {out}")


def cmd_demo(a):
    """Train (or reuse) the default run on real MOSI and print it beside the published rows."""
    from .analysis.anchors import load_anchors
    from .config import build_config
    from .training import evaluate_run, train

    out = Path(a.out)
    overrides = [f"data.data_dir={a.data_dir}"] if a.data_dir else []
    cfg = build_config(a.model, "mosi", overrides + list(a.overrides))
    if (out / "metrics.json").exists() and (out / "run.json").exists():
        print(f"{out} has finished already: re-evaluating its selected checkpoint")
        metrics = evaluate_run(out)
    else:
        metrics = train(cfg, out, resume=(out / "checkpoints").exists())
    anchors = load_anchors("mosi", cfg["data"].get("data_dir"))
    print_metrics(metrics, f"{a.model} on real CMU-MOSI (MiniLM text + openSMILE audio, official split) -> {out}",
                  anchors=[r for r in anchors if r["model"] in ("MulT", "MISA", "Self-MM", "DPDF-LQ")])
    if anchors:
        print("Published columns use BERT + COVAREP/Facet sequence features: reference points, not like for like.")


def cmd_summarize(a):
    from .analysis.summary import find_runs, group_runs, markdown_table, write_summary

    groups = group_runs(find_runs(a.runs), split=a.split)
    if not groups:
        raise DynafuseError("no finished runs (metrics.json + run.json) found", " ".join(a.runs))
    print(write_summary(groups, a.out) if a.out else markdown_table(groups))


def cmd_experiment(a):
    from .experiments.runner import run_experiment

    failed = run_experiment(a.file, data_dir=a.data_dir, workers=a.workers, dry_run=a.dry_run,
                            report_only=a.report_only)
    if failed:
        raise DynafuseError(f"{len(failed)} cells failed; their train.log says why (rerun to retry them)", a.file)


def cmd_eval(a):
    from .training import evaluate_run

    metrics = evaluate_run(a.run)
    print(json.dumps(metrics, indent=2)) if a.json else print_metrics(metrics, str(a.run))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynafuse", description="Dynamic multimodal fusion for sentiment analysis")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models", help="list registered models").set_defaults(fn=cmd_models)
    sub.add_parser("datasets", help="list registered datasets and readable formats").set_defaults(fn=cmd_datasets)
    t = sub.add_parser("train", help="train one run, select on valid, test once")
    t.add_argument("--model", required=True)
    t.add_argument("--dataset", required=True, help="a registered name or FORMAT:PATH")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="run folder (default runs/MODEL-DATASET-sSEED)")
    t.add_argument("--task", choices=["regression", "3class"])
    t.add_argument("--data-dir", help="folder of datasets (default $DYNAFUSE_DATA or ../shared/datasets)")
    t.add_argument("--config", help="a YAML file merged over the presets")
    t.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    t.add_argument("--force", action="store_true", help="overwrite a finished run")
    t.add_argument("--allow-pickle", action="store_true", help="allow loading a pickle file (it can run code)")
    t.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="re-evaluate a saved run")
    e.add_argument("--run", required=True)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)
    d = sub.add_parser("demo", help="train and evaluate the default model on real MOSI, beside published rows")
    d.add_argument("--model", default="early_fusion")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-dir")
    d.add_argument("overrides", nargs="*")
    d.set_defaults(fn=cmd_demo)
    s = sub.add_parser("summarize", help="mean ± std tables over the finished runs under some folders")
    s.add_argument("runs", nargs="+")
    s.add_argument("--split", default="test", choices=["valid", "test"])
    s.add_argument("--out", help="write OUT.md and OUT.json")
    s.set_defaults(fn=cmd_summarize)
    x = sub.add_parser("experiment", help="run a declared grid (models x datasets x seeds x variants), resumably")
    x.add_argument("file")
    x.add_argument("--data-dir")
    x.add_argument("--workers", type=int, help="cells at once (default: the file's `workers`, else 1)")
    x.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    x.add_argument("--report-only", action="store_true", help="only rewrite the report from the finished cells")
    x.set_defaults(fn=cmd_experiment)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also sit between or after options (argparse stops collecting them at an option)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        args.fn(args)
    except DynafuseError as e:
        print(f"dynafuse: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: nothing to report
        return 0
    except OSError as e:  # disk full, permission denied, ...: say which file, no traceback
        print(f"dynafuse: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynafuse: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
