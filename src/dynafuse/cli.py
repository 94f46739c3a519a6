"""`dynafuse` command line: models, datasets, train, eval."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import catalog
from .errors import DynafuseError


def console():
    """A rich console for tables: a terminal's own width; into a file or pipe 160 columns, not rich's 80 (which
    cut the published column names)."""
    from rich.console import Console

    c = Console()
    if not c.is_terminal:
        c.width = max(c.width, 160)
    return c


def _table(rows: dict[str, str]) -> None:
    from rich.table import Table

    t = Table(show_header=True, header_style="bold")
    t.add_column("name", no_wrap=True)
    t.add_column("description", overflow="fold")
    for k, v in rows.items():
        t.add_row(k, v)
    console().print(t)


def print_metrics(metrics: dict, title: str = "", anchors: list[dict] | None = None) -> None:
    """Metrics as rows, splits (and any published reference rows) as columns; narrow terminals wrap the column
    names instead of cutting them."""
    from rich.table import Table

    t = Table(title=title or None)
    t.add_column("metric", no_wrap=True)
    for split in metrics:
        t.add_column(split, justify="right", overflow="fold")
    for a in anchors or []:
        t.add_column(f"{a['model']} (published)", justify="right", style="dim", overflow="fold")
    for k in (k for k in metrics["test"] if k != "n"):
        cells = [f"{metrics[s][k]:.3f}" for s in metrics]
        cells += ["" if a.get(k) is None else f"{a[k]:g}" for a in anchors or []]
        t.add_row(k, *cells)
    console().print(t)


def cmd_models(_):
    from .catalog import models

    _table(models())


def cmd_datasets(_):
    from .catalog import datasets, format_descriptions

    _table({**datasets(), **format_descriptions()})


def cmd_train(a):
    from .files import safe_name
    from .training import build_config

    overrides = list(a.overrides)
    overrides += [f"train.seed={a.seed}"] if a.seed is not None else []  # else train.seed (default 0) stands
    overrides += [f"model.task={a.task}"] if a.task else []
    if a.data_dir:
        overrides.append(f"data.data_dir={a.data_dir}")
    if a.allow_pickle:
        overrides.append("data.options.allow_pickle=true")
    cfg = build_config(a.model, a.dataset, overrides, a.config, a.preset)
    from .training import train  # after the settings are checked: importing Lightning takes seconds

    out = Path(a.out or f"runs/{a.model}-{safe_name(a.dataset)}-s{cfg.train.seed}")
    metrics = train(cfg, out, resume=a.resume, force=a.force)
    if metrics:
        print_metrics(metrics, f"{a.model} on {a.dataset} (seed {cfg.train.seed}) -> {out}")


def cmd_demo(a):
    """Train (or reuse) the default run on real MOSI and print it beside the published rows."""
    from .analysis.anchors import load_anchors
    from .training import RunDir, build_config, evaluate_run, train

    out = Path(a.out)
    overrides = [f"data.data_dir={a.data_dir}"] if a.data_dir else []
    cfg = build_config(a.model, "mosi", overrides + list(a.overrides))
    if RunDir(out).finished:
        print(f"{out} has finished already: re-evaluating its selected checkpoint")
        metrics = evaluate_run(out)
    else:
        metrics = train(cfg, out, resume=RunDir(out).started)
    anchors = load_anchors("mosi", cfg.data.data_dir)
    print_metrics(metrics, f"{a.model} on real CMU-MOSI (MiniLM text + openSMILE audio, official split) -> {out}",
                  anchors=[r for r in anchors if r["model"] in ("MulT", "MISA", "Self-MM", "DPDF-LQ")])
    if anchors:
        print("Published columns use BERT + COVAREP/Facet sequence features: reference points, not like for like.")
    print(f"Score your own clip with this run (text; its audio came with MOSI): dynafuse predict CLIP.mp4 --run {out}")


def cmd_summarize(a):
    from .analysis.summary import find_runs, group_runs, markdown_table, write_summary

    groups = group_runs(find_runs(a.runs, a.split), split=a.split)
    if not groups:
        raise DynafuseError("no finished runs (run.json) found", " ".join(a.runs))
    print(write_summary(groups, a.out) if a.out else markdown_table(groups))


def cmd_experiment(a):
    from .experiments.runner import run_experiment

    failed = run_experiment(a.file, data_dir=a.data_dir, workers=a.workers, dry_run=a.dry_run,
                            report_only=a.report_only, backend=a.backend)
    if failed:
        raise DynafuseError(f"{len(failed)} cells failed; their train.log says why (rerun to retry them)", a.file)


def cmd_tune(a):
    from .experiments.search import tune

    best = tune(a.file, backend=a.backend, trials=a.trials, workers=a.workers, data_dir=a.data_dir)
    print(f"best of {best['trials_finished']} trials on valid {best['metric']}: {best['trial']} "
          f"({best['valid_score']:.4f}) -> {Path(best['out']) / 'best.yaml'}")
    print("overrides: " + " ".join(best["overrides"]))


def finished_run(path) -> None:
    """Check a run folder before the trainer is imported (Lightning takes seconds): the same one-line errors as
    loading it (not a run folder, not finished, a broken run.json), at once."""
    from .training import RunDir

    RunDir(path).info()


def cmd_eval(a):
    finished_run(a.run)
    from .training import evaluate_run

    metrics = evaluate_run(a.run, allow_pickle=a.allow_pickle, data_dir=a.data_dir)
    print(json.dumps(metrics, indent=2)) if a.json else print_metrics(metrics, str(a.run))


def cmd_robust(a):
    finished_run(a.run)
    from .experiments.robustness import parse_levels, print_robustness, robustness_run

    result = robustness_run(a.run, split=a.split, seed=a.seed, levels=parse_levels(a.levels) if a.levels else None,
                            data_dir=a.data_dir)
    print_robustness(result)
    print(f"wrote {Path(a.run) / 'robustness.json'} ({result['seconds']:.0f} s)")


def cmd_transfer(a):
    finished_run(a.run)
    from .experiments.transfer import transfer_run

    r = transfer_run(a.run, a.dataset, data_dir=a.data_dir, limit=a.limit, allow_pickle=a.allow_pickle)
    columns = {"test": r["metrics"]}
    if r.get("metrics_unseen"):  # the target clips the source dataset does not hold
        columns["test, unseen clips"] = r["metrics_unseen"]
    if r["in_domain"]:
        columns[f"{r['source']} test"] = r["in_domain"]
    print_metrics(columns, f"{r['model']} trained on {r['source']}, zero-shot on {r['target']} test (n={r['n']})")
    print(r["notes"])


def cmd_bench(a):
    from .analysis.bench import bench, parse_variant, print_report, write_report

    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else None
    overrides = list(a.overrides) + ([f"data.data_dir={a.data_dir}"] if a.data_dir else [])
    overrides += ["data.options.allow_pickle=true"] if a.allow_pickle else []
    result = bench(models, a.dataset, train=a.train, threads=a.threads, repeats=a.repeats, warmup=a.warmup,
                   steps=a.steps, overrides=overrides, thread_epochs=a.compare_threads,
                   variants=[parse_variant(v) for v in a.variant], baseline=a.baseline)
    print_report(result)
    md, js = write_report(result, a.out)
    print(f"wrote {md} and {js}")


def cmd_report(a):
    from .analysis.report import write_report

    write_report(a.runs, a.out, split=a.split, data_dir=a.data_dir)
    print(f"wrote {a.out}.md, _overview.md, .html, .csv, _summary.csv, .json and {a.out}_figures/")


def cmd_explain(a):
    finished_run(a.run)
    from .analysis.explain import explain_run

    out = Path(a.out or Path(a.run) / "explain")
    info = explain_run(a.run, out, split=a.split, data_dir=a.data_dir)
    for note in info["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}/explain.json" + "".join(f", {f}" for f in info["figures"]))


def cmd_predict(a):
    finished_run(a.run)
    from .media.predict import Predictor, clip_paths, predict_lines, print_prediction

    clips = clip_paths(a.clips)
    predictor = Predictor(a.run, asr_model=None if a.no_asr else "tiny.en")
    if len(clips) == 1 and not a.json and not Path(a.clips[0]).is_dir():  # one clip: a readable table
        print_prediction(predictor(clips[0], a.transcript))
        return
    # a folder or several clips: one warm model for all, one JSON line per clip, a bad clip does not stop the rest
    failed = predict_lines(predictor, clips, a.transcript, progress=len(clips) > 1)
    if failed:
        raise DynafuseError(f"{failed} of {len(clips)} clips could not be scored (see above)")


def cmd_serve(a):
    from .serve import run_server

    run_server(a.run, host=a.host, port=a.port, queue=a.queue, timeout=a.timeout, max_upload_mb=a.max_upload_mb,
               asr_model=None if a.no_asr else "tiny.en", threads=a.threads)


def cmd_extract(a):
    from .media.extract import extract_dataset, print_summary

    media = {m: ({"extractor": getattr(a, m)} if getattr(a, m) != "none" else None)
             for m in ("audio", "vision") if getattr(a, m)}
    if a.fps and media.get("vision", {}) is not None:
        media["vision"] = {**media.get("vision", {}), "fps": a.fps}
    text = {k: v for k, v in (("backbone", a.backbone), ("max_len", a.max_len)) if v}
    if text:
        media["text"] = text
    try:
        summary = extract_dataset(a.src, a.out, workers=a.workers, layout=a.layout, transcripts=a.transcripts,
                                  limit=a.limit, value_range=a.value_range, media=media)
    except KeyboardInterrupt:
        print("dynafuse: interrupted; finished clips are cached: rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    print_summary(summary)


def cmd_convert(a):
    from .data.convert import convert, convert_settings, print_summary

    overrides = list(a.overrides) + ([f"data.data_dir={a.data_dir}"] if a.data_dir else [])
    options, value_range, data_dir = convert_settings(a.src, overrides + (["data.options.allow_pickle=true"]
                                                                          if a.allow_pickle else []))
    print_summary(convert(a.src, a.out, data_dir, options, value_range))


def whole(low: int):
    """An argparse type: a whole number >= `low` (a negative --limit or --workers is refused where it is parsed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, not {value}")
        return value

    return parse


DATA_NOW = "where the data is now (default: the run's own, $DYNAFUSE_DATA, ../shared/datasets)"


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: `dynafuse CMD: error: ... (dynafuse CMD --help)`, no usage
    block above it. Sub-command parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Once(argparse.Action):
    """An option that may be given once: a second one is an error, not silently the last."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice; give one")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dynafuse", description="Dynamic multimodal fusion for sentiment analysis")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("models", help="list registered models").set_defaults(fn=cmd_models)
    sub.add_parser("datasets", help="list registered datasets and readable formats").set_defaults(fn=cmd_datasets)
    t = sub.add_parser("train", help="train one run, select on valid, test once")
    t.add_argument("--model", required=True, help=f"a registered model: {', '.join(catalog.models())} "
                                                  "(`dynafuse models` describes them)")
    t.add_argument("--dataset", required=True, help=f"a registered dataset ({', '.join(catalog.datasets())}) or "
                                                    f"FORMAT:PATH ({', '.join(catalog.formats())})")
    t.add_argument("--seed", type=int, help="seed of initialisation, shuffling and dropout; same as train.seed=N "
                                            "(default 0)")
    t.add_argument("--out", help="run folder (default runs/MODEL-DATASET-sSEED)")
    t.add_argument("--task", choices=["regression", "3class"])
    t.add_argument("--data-dir", help="folder of datasets (default $DYNAFUSE_DATA or ../shared/datasets)")
    t.add_argument("--config", help="a YAML file merged over the presets")
    t.add_argument("--preset", action=Once,
                   help="named settings merged after the model's preset: 2501.08085 (the paper's MOSEI 3-class, "
                        "cross-entropy, Adam; its fusion models) or kuda-narrow (KuDA at the CPU's width)")
    t.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    t.add_argument("--force", action="store_true", help="overwrite a finished run")
    t.add_argument("--allow-pickle", action="store_true", help="allow loading a pickle file (it can run code)")
    t.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="re-evaluate a saved run")
    e.add_argument("--run", required=True, help="a finished run folder (with its checkpoints/, e.g. runs/demo)")
    e.add_argument("--data-dir", help=DATA_NOW)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--allow-pickle", action="store_true",
                   help="load a checkpoint that holds more than plain weights (it can run code: only files you trust)")
    e.set_defaults(fn=cmd_eval)
    d = sub.add_parser("demo", help="train and evaluate the default model on real MOSI, beside published rows")
    d.add_argument("--model", default="early_fusion", help="a registered model (default early_fusion)")
    d.add_argument("--out", default="runs/demo", help="run folder (default runs/demo; reused once finished)")
    d.add_argument("--data-dir", help="folder of datasets (default $DYNAFUSE_DATA or ../shared/datasets)")
    d.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    d.set_defaults(fn=cmd_demo)
    s = sub.add_parser("summarize", help="mean ± std tables over the finished runs under some folders")
    s.add_argument("runs", nargs="+")
    s.add_argument("--split", default="test", choices=["valid", "test"])
    s.add_argument("--out", help="write OUT.md and OUT.json")
    s.set_defaults(fn=cmd_summarize)
    x = sub.add_parser("experiment", help="run a declared grid (models x datasets x seeds x variants), resumably")
    x.add_argument("file")
    x.add_argument("--data-dir")
    x.add_argument("--workers", type=whole(1), help="cells at once (default: the file's `workers`, else 1)")
    x.add_argument("--backend", choices=["local", "ray"], help="local process pool (default) or Ray tasks")
    x.add_argument("--dry-run", action="store_true", help="list the cells and evaluations that would run")
    x.add_argument("--report-only", action="store_true", help="only rewrite the report from the finished cells")
    x.set_defaults(fn=cmd_experiment)
    tu = sub.add_parser("tune", help="hyper-parameter search selecting on the valid split only, resumably")
    tu.add_argument("file", help="a search YAML (model, dataset, metric, space, ...)")
    tu.add_argument("--backend", choices=["optuna", "ray"], help="Optuna in this process (default) or Ray Tune")
    tu.add_argument("--trials", type=whole(0), help="completed trials wanted (default: the file's `trials`)")
    tu.add_argument("--workers", type=whole(1), help="trials at once (default: the file's `workers`, else 1)")
    tu.add_argument("--data-dir")
    tu.set_defaults(fn=cmd_tune)
    r = sub.add_parser("robust", help="score a finished run under missing modalities, noise and token drop")
    r.add_argument("run", help="run folder (with its local checkpoint)")
    r.add_argument("--data-dir", help=DATA_NOW)
    r.add_argument("--split", default="test", choices=["valid", "test"])
    r.add_argument("--seed", type=whole(0), default=0, help="seed of the corruptions")
    r.add_argument("--levels", help="comma-separated corruption levels (default 0,0.1,...,0.9)")
    r.set_defaults(fn=cmd_robust)
    tr = sub.add_parser("transfer", help="score a finished run on another dataset's test split (zero-shot)")
    tr.add_argument("run", help="run folder (with its local checkpoint)")
    tr.add_argument("--dataset", required=True, help="the target dataset (same label range)")
    tr.add_argument("--data-dir")
    tr.add_argument("--limit", type=whole(1), help="first N rows of each target split only (quick checks)")
    tr.add_argument("--allow-pickle", action="store_true", help="allow loading a target pickle file (it can run code)")
    tr.set_defaults(fn=cmd_transfer)
    b = sub.add_parser("bench", help="params, FLOPs, latency, throughput, memory (and training time) side by side")
    b.add_argument("--dataset", default="mosi")
    b.add_argument("--models", help="comma-separated (default: every model but unimodal_audio/vision)")
    b.add_argument("--train", action="store_true", help="also time real training steps")
    b.add_argument("--out", default="reports/cost", help="write OUT.md and OUT.json")
    b.add_argument("--threads", type=whole(1), help="torch threads for every model (default $DYNAFUSE_THREADS, else 1)")
    b.add_argument("--compare-threads", type=whole(1), nargs="?", const=5, metavar="EPOCHS",
                   help="also time real training runs (daf on mosi-bclstm, early_fusion on mosi) of EPOCHS epochs "
                        "(default 5): 1 thread (the default) against 2, alone and 2 at once")
    b.add_argument("--repeats", type=whole(1), default=20, help="timed passes per figure (the median is reported)")
    b.add_argument("--warmup", type=whole(0), default=3, help="untimed passes before timing")
    b.add_argument("--steps", type=whole(1), default=10, help="timed training steps with --train")
    b.add_argument("--variant", action="append", default=[], metavar="'NAME: key=value ...'",
                   help="measure each model once per variant (repeatable), with these overrides, instead of its "
                        "preset (and CrossSent's gmra=false)")
    b.add_argument("--baseline", help="row label the training ratio divides by: MODEL or 'MODEL (VARIANT)' "
                                      "(default: early_fusion, when measured)")
    b.add_argument("--data-dir")
    b.add_argument("--allow-pickle", action="store_true", help="allow loading a pickle file (it can run code)")
    b.add_argument("overrides", nargs="*", help="key.path=value config overrides for every model")
    b.set_defaults(fn=cmd_bench)
    rp = sub.add_parser("report", help="Markdown/HTML/CSV/JSON report with figures over finished runs")
    rp.add_argument("runs", nargs="+", help="run folders or folders holding runs")
    rp.add_argument("--out", required=True, help="writes OUT.md, OUT_overview.md (its main table alone), OUT.html, "
                                                 "OUT.csv, OUT_summary.csv, OUT.json, OUT_figures/")
    rp.add_argument("--split", default="test", choices=["valid", "test"])
    rp.add_argument("--data-dir", help="datasets folder whose ../anchors holds the published rows")
    rp.set_defaults(fn=cmd_report)
    xt = sub.add_parser("extract", help="features from raw clips (label.csv + Raw/<video_id>/<clip_id>.mp4), "
                                        "resumably; train on them with --dataset path:OUT")
    xt.add_argument("src", help="folder with label.csv and Raw/ (the MMSA-FET layout)")
    xt.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    xt.add_argument("--workers", type=int, default=1, help="clips at once, one process each")
    xt.add_argument("--layout", choices=["aligned", "unaligned", "utterance"], help="default: aligned")
    xt.add_argument("--transcripts", choices=["label", "asr"], default="label",
                    help="label.csv's text (timed by ASR; blank ones transcribed) or ASR for every clip")
    xt.add_argument("--audio", help="audio extractor: egemaps (default), compare or none")
    xt.add_argument("--vision", help="vision extractor: face (default) or none")
    xt.add_argument("--fps", type=float, help="vision frames per second (default 5)")
    xt.add_argument("--backbone", help="text backbone whose sub-tokens the aligned layout follows (default minilm; "
                                       "train with the same data.text.backbone)")
    xt.add_argument("--max-len", type=int, help="text tokens kept (default 50; train with the same data.text.max_len)")
    xt.add_argument("--limit", type=int, help="first N rows of label.csv only (quick checks)")
    xt.add_argument("--value-range", type=float, help="labels lie in [-R, R] (default: 1 if all |label| <= 1, else 3)")
    xt.set_defaults(fn=cmd_extract)
    cv = sub.add_parser("convert", help="any readable dataset -> the on-disk folder --dataset path:OUT reads "
                                        "(read once; training then reads rows from disk)")
    cv.add_argument("src", help="a registered dataset or FORMAT:PATH (mmsa:FILE.pkl, mult:FILE.pkl, misa:FOLDER)")
    cv.add_argument("--out", required=True, help="the folder to write (a finished conversion of the same source "
                                                 "is left as it is)")
    cv.add_argument("--data-dir", help="folder of datasets (default $DYNAFUSE_DATA or ../shared/datasets)")
    cv.add_argument("--allow-pickle", action="store_true", help="allow loading a pickle file (it can run code)")
    cv.add_argument("overrides", nargs="*", help="data.options.KEY=VALUE reader options, data.value_range=R")
    cv.set_defaults(fn=cmd_convert)
    pr = sub.add_parser("predict", help="score raw clips (video or audio) with a trained run")
    pr.add_argument("clips", nargs="+", help="video or audio files, or folders of them (one JSON line per clip)")
    pr.add_argument("--run", required=True, help="a finished run folder (with its local checkpoint)")
    pr.add_argument("--transcript", help="what is said (default: transcribed with whisper tiny.en)")
    pr.add_argument("--no-asr", action="store_true", help="never run ASR (a transcript's words are timed evenly)")
    pr.add_argument("--json", action="store_true", help="one JSON object per clip")
    pr.set_defaults(fn=cmd_predict)
    sv = sub.add_parser("serve", help="HTTP API and web page scoring uploaded clips with runs kept warm")
    sv.add_argument("--run", action="append", required=True, metavar="[NAME=]RUN",
                    help="a finished run folder, optionally named (repeat for several; the first is the default)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--queue", type=int, default=4, help="requests that may wait while one is scored; more get 503")
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait and score (then 504)")
    sv.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted (then 413)")
    sv.add_argument("--no-asr", action="store_true", help="never run ASR (requests must give a transcript)")
    sv.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    sv.set_defaults(fn=cmd_serve)
    ex = sub.add_parser("explain", help="gate distributions, attention maps and t-SNE of a trained run")
    ex.add_argument("run")
    ex.add_argument("--data-dir", help=DATA_NOW)
    ex.add_argument("--out", help="output folder (default RUN/explain)")
    ex.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ex.set_defaults(fn=cmd_explain)
    for sp in sub.choices.values():  # an error after parsing is reported by the command's own parser
        sp.set_defaults(parser=sp)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also sit between or after options (argparse stops collecting them at an option)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        args.parser.error(f"unrecognized arguments: {' '.join(stray)}")
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
