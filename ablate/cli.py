"""ablate: controlled architecture-ablation studies of attention / Mamba hybrid language models.

Every variant trains under one recipe on the same data, matched in parameters; every run writes a
record (run.json) that tables and plots read.

  ablate variants [NAME] [--plan]      the variants: parameters, attn:ssm ratio, cache MB; a layer plan
  ablate keys [SECTION]                every config key with its type, default and help
  ablate train VARIANT [--task T]      one run (resumes; a finished run is not redone)
  ablate sweep sweeps/NAME.yaml        a study: a grid of runs through an Optuna study, then its table
  ablate table RESULTS_DIR             a results table (markdown, CSV, LaTeX) and the headline-vs-cache plot
  ablate export RUN_DIR OUT            a run as safetensors + config (+ tokenizer), for ablate.load_run
  ablate eval RUN_DIR --tasks ...      recall / commonsense / perplexity through lm-evaluation-harness
  ablate maps RUN_DIR --out DIR        attention and SSM implicit maps of a real input, their statistics
  ablate importance RUN_DIR            the headline metric with each layer's attention / SSM path or head zeroed
  ablate report RESULTS_DIR            execute the report notebooks into RESULTS_DIR/report (HTML, figures)
  ablate lm-eval ARGS...               lm-eval's own CLI, with the model `ablate` and the local tasks

`ablate COMMAND --help` says more about each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import ablate
from ablate.config import ConfigError, ModelConfig, help_lines


def comma_list(allowed: Iterable[str] | None = None) -> Callable[[str], list[str]]:
    """An argparse type for "a,b,c"; with ``allowed``, an unknown item is an error naming it and
    listing what is allowed (argparse prefixes the option's name)."""
    allowed = None if allowed is None else list(allowed)

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        unknown = sorted(set(items) - set(allowed)) if allowed is not None else []
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; allowed: {', '.join(allowed)}")
        return items

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: a positive integer")
    return value


def _variants(args) -> int:
    from tabulate import tabulate

    from ablate.plan import expand
    from ablate.sizing import cache_bytes, count_params
    from ablate.variants import load_variant, variant_names

    if args.plan:
        if not args.name:
            raise ConfigError("ablate variants --plan needs a variant NAME")
        variant = load_variant(args.name)
        print(f"{variant.name}: {variant.description}")
        print(f"n_meta = {variant.model.n_meta}")
        for spec in expand(variant.model):
            print(spec.describe())
        return 0
    rows = []
    for name in [args.name] if args.name else variant_names():
        v = load_variant(name)
        c = count_params(v.model)
        cache = cache_bytes(v.model, args.seq_len, args.dtype)["total"]
        rows.append([name, f"{c.total / 1e6:,.2f}", f"{c.non_embedding / 1e6:,.2f}",
                     c.attn_ssm_ratio, f"{cache / 1e6:,.2f}", v.description])
    headers = ["variant", "params (M)", "non-emb (M)", "attn:ssm",
               f"cache MB ({args.dtype}, {args.seq_len} tok)", "description"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


def config_sections() -> dict[str, tuple[str, type]]:
    """Every config section a user sets, by name: (key prefix, schema)."""
    import ablate.evaluate  # noqa: F401  (fills the evaluation registry)
    from ablate.registry import EVALUATIONS, MIXERS, TASKS
    from ablate.sweep.grid import SweepConfig
    from ablate.train.recipe import RecipeConfig

    sections = {"model": ("", ModelConfig)}
    sections |= {f"mixers.{n}": (f"mixers.{n}.", MIXERS.get(n).config) for n in MIXERS.names() if MIXERS.get(n).config}
    sections["recipe"] = ("recipe.", RecipeConfig)
    sections |= {name: (f"{name}.", TASKS.get(name).config) for name in TASKS.names()}
    sections |= {f"evaluate.{n}": (f"evaluate.{n}.", EVALUATIONS.get(n).config) for n in EVALUATIONS.names()}
    sections["sweep"] = ("", SweepConfig)
    return sections


def _keys(args) -> int:
    from tabulate import tabulate

    sections = config_sections()
    chosen = args.section or list(sections)
    for name in chosen:
        if name not in sections:
            raise ConfigError(f"ablate keys: unknown section '{name}'; allowed: {', '.join(sections)}")
    for name in chosen:
        prefix, cls = sections[name]
        where = {"model": "variant files, sweep `sets:`, --set", "sweep": "top level of a sweep file"}.get(
            name, "sweep files and --set")
        print(f"\n## {name}  ({where})\n")
        rows = help_lines(cls, prefix)
        print(tabulate(rows, headers=["key", "type", "default", "help"], tablefmt="simple", disable_numparse=True))
    return 0


def _train(args) -> int:
    from ablate.train.config import run_config
    from ablate.train.run import rank_zero, train
    from ablate.train.tracking import WandbConfig

    if args.name is not None and (not args.name or Path(args.name).name != args.name or args.name in (".", "..")):
        raise ConfigError(f"--name {args.name!r}: a run name is one folder name (no '/', not '.' or '..')")
    cfg = run_config(args.variant, args.task, args.set or [])
    if args.wandb:
        cfg = dataclasses.replace(cfg, wandb=cfg.wandb or WandbConfig())
    run_dir = Path(args.out) / (args.name or f"{Path(args.variant).stem}-{cfg.task}-s{cfg.recipe.seed}")
    record = train(cfg, run_dir, progress=not args.quiet, replace=args.overwrite)
    if not rank_zero():  # a multi-device run's other processes ran the same command: one summary
        return 0
    print(json.dumps({"run_dir": str(run_dir), "status": record["status"],
                      "tokens_per_s": record.get("tokens_per_s"), **record.get("metrics", {})}, indent=2))
    print(f"record: {run_dir / 'run.json'}\nmetrics: {run_dir / 'logs'}/attempt*/metrics.csv\n"
          f"checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}")
    return 0


def _sweep(args) -> int:
    from ablate.sweep.launch import dry_run, launch

    if args.dry_run:
        return dry_run(args.file)

    gpus = None if args.gpus is None else [] if args.gpus == ["none"] else args.gpus
    return launch(args.file, workers=args.workers, storage_url=args.storage, gpus=gpus)


def _table(args) -> int:
    from ablate.analysis.tables import write_tables

    results = Path(args.results)
    if not (list(results.glob("runs/*/run.json")) or list(results.glob("*/run.json"))):
        raise ConfigError(f"{results}: no run records (RESULTS/runs/*/run.json or RESULTS/*/run.json)")
    paths = write_tables(args.results)
    print(Path(paths["markdown"]).read_text())
    print("files:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
    return 0


def _export(args) -> int:
    from ablate.api import export_run

    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))}); "
          f"load it with ablate.load_run('{out}')")
    return 0


def _eval(args) -> int:
    from tabulate import tabulate

    from ablate.evaluate.harness import evaluate_run

    result = evaluate_run(args.run_dir, args.tasks, args.limit, args.batch_size, args.data_dir, args.device)
    rows = []
    for key, value in result["metrics"].items():
        task, metric = key.split("/") if "/" in key else (key.replace("_avg", " avg"), "mean of headline metrics")
        err = result["stderr"].get(key)
        rows.append([task, metric, f"{value:.4f}", "-" if err is None else f"{err:.4f}"])
    print(tabulate(rows, headers=["task", "metric", "value", "stderr"], tablefmt="github", disable_numparse=True))
    info = result["info"]
    limit = f", at most {info['limit']} items per task" if info["limit"] else ""
    print(f"\nlm-eval {info['lm_eval_version']}, {info['seconds']:.0f} s{limit}; stderr: lm-eval's, over items "
          f"(not seeds)\nfiles: {Path(args.run_dir) / 'eval'}/ (results.json, samples_*.jsonl); metrics added "
          f"to {Path(args.run_dir) / 'run.json'} as eval/lm_eval/TASK/METRIC")
    return 0


def _maps(args) -> int:
    from ablate.probe.maps import write_maps

    paths = write_maps(args.run_dir, args.out, args.input, args.layers, args.seq_len, args.pairs, args.text,
                       figures=not args.no_figures, device=args.device)
    print("files:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
    return 0


def _importance(args) -> int:
    import pandas as pd
    from tabulate import tabulate

    from ablate.probe.importance import write_importance

    paths = write_importance(args.run_dir, args.out, args.layers, heads=not args.no_heads, max_examples=args.limit,
                             device=args.device)
    table = pd.read_csv(paths["csv"])
    shown = table[["layer", "path", "head", "zeroed", "metric", "baseline", "value", "drop"]].assign(
        head=table["head"].map(lambda h: "-" if pd.isna(h) else str(int(h))))
    print(tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=".4f"))
    print("\nfiles:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
    return 0


def _report(args) -> int:
    from ablate.analysis.report import write_report

    paths = write_report(args.results, args.storage, args.maps_runs, args.kernel, args.compare)
    print("files:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
    return 0


def _lm_eval(args) -> int:
    """lm-eval's own command line (``lm_eval run ...``), after registering the ablate model; the
    local tasks' include path is added unless given."""
    import ablate.evaluate.harness as harness

    harness.offline_lm_eval()
    from lm_eval.__main__ import cli_evaluate

    import ablate.evaluate.lm_eval_model  # noqa: F401  (registers the model "ablate")
    from ablate.evaluate.lm_tasks import INCLUDE_PATH

    argv = [a for a in args.args if a != "--"]
    if "--include_path" not in argv and any(a not in ("-h", "--help") for a in argv):
        argv += ["--include_path", str(INCLUDE_PATH)]
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ablate.registry import TASKS
    from ablate.tasks import default_task

    parser = argparse.ArgumentParser(prog="ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ablate {ablate.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("variants", help="list variants with parameters, attn:ssm ratio and cache")
    p.add_argument("name", nargs="?", help="one variant (default: all in variants/)")
    p.add_argument("--plan", action="store_true", help="print the per-layer plan of NAME")
    p.add_argument("--seq-len", type=int, default=8000, help="tokens for the cache column")
    p.add_argument("--dtype", default="fp16", help="cache dtype: fp16 | bf16 | fp32")
    p.set_defaults(func=_variants)

    p = sub.add_parser("keys", help="every config key (model, recipe, each task and evaluation, sweep) "
                       "with its type, default and help")
    p.add_argument("section", nargs="*", help="only these sections (model, recipe, a task's name, sweep, ...)")
    p.set_defaults(func=_keys)

    p = sub.add_parser("train", help="train one variant on one task (resumes; skips if finished)")
    p.add_argument("variant", help="a variant name (ablate variants lists them) or a variant YAML path")
    p.add_argument("--task", default=default_task(), choices=TASKS.names(),
                   help=f"task to train and evaluate on (default {default_task()})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model key (size.d_model=64), recipe.KEY, TASK.KEY or evaluate.NAME.KEY; "
                   "repeatable")
    p.add_argument("--out", default="runs", help="parent directory of the run directory")
    p.add_argument("--name", help="run directory name (default VARIANT-TASK-sSEED)")
    p.add_argument("--overwrite", action="store_true",
                   help="the run directory holds a run of another configuration: move it aside "
                   "(to .replaced/NAME-HASH beside it) and train this one")
    p.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases (offline; --set wandb.mode=online to log live)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("sweep", help="run a sweep file's grid through an Optuna study")
    p.add_argument("file", help="a sweep file (sweeps/NAME.yaml) or a shipped sweep's name (default, roadmap, ...)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--dry-run", action="store_true",
                   help="print every run's parameters, matched knob and layer plan; train nothing")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite next to the results)")
    p.add_argument("--gpus", type=comma_list(), metavar="IDS",
                   help="GPUs the local workers are pinned to, round robin (default: every GPU of this "
                   "host; none: no pinning)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("table", help="results table (markdown, CSV, LaTeX) and headline-vs-cache plot")
    p.add_argument("results", help="a sweep's results directory (holding runs/*/run.json)")
    p.set_defaults(func=_table)

    p = sub.add_parser("export", help="write a run as safetensors weights + config.json (+ tokenizer.json)")
    p.add_argument("run_dir", help="a run directory (run.json, checkpoints/last.ckpt)")
    p.add_argument("out", help="the export directory (Hugging Face layout; ablate.load_run reads it)")
    p.set_defaults(func=_export)

    from ablate.evaluate.lm_tasks import GROUPS
    from ablate.evaluate.lm_tasks import TASKS as LM_TASKS

    p = sub.add_parser("eval", help="evaluate a finished text run with lm-evaluation-harness on the local "
                       "benchmark files (offline); adds the metrics to its run record")
    p.add_argument("run_dir", help="a finished run directory (trained on the text task)")
    p.add_argument("--tasks", type=comma_list(), default=["commonsense", "recall"],  # checked by the evaluation
                   help=f"groups ({', '.join(GROUPS)}) or tasks ({', '.join(LM_TASKS)}), also as lm-eval names "
                   "them (ablate_piqa); default commonsense,recall")
    p.add_argument("--limit", type=positive_int, help="at most N items per task (a quick look; recorded with the "
                   "result)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="requests per forward (scores do not depend on it)")
    p.add_argument("--data-dir", help="the local benchmark files (default: $ABLATE_DATA_DIR, else ../shared/data "
                   "beside the checkout)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("maps", help="attention heads' and SSM heads' maps of a real input, per layer (PNG, PDF), "
                       "with their statistics (CSV)")
    p.add_argument("run_dir", help="a finished run directory (run.json, checkpoints/last.ckpt) or an export")
    p.add_argument("--input", default="task",
                   help="task: an example of the run's task (MQAR: generated, keys/values/queries marked); "
                   "text: a text sample through the run's tokenizer")
    p.add_argument("--layers", help="comma-separated layer indices (default: every layer)")
    p.add_argument("--seq-len", type=positive_int, help="tokens of the input (MQAR default: its first test "
                   "segment's length; other tasks: the validation example's)")
    p.add_argument("--pairs", type=positive_int, help="MQAR key-value pairs (default: the segment's, or one per "
                   "16 tokens)")
    p.add_argument("--text", help="with --input text: the text (default: the run's validation text)")
    p.add_argument("--out", required=True, help="output directory (layerN.npz, maps.json, map_stats.csv, "
                   "layerN.png/.pdf)")
    p.add_argument("--no-figures", action="store_true", help="write the arrays and statistics only")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    p.set_defaults(func=_maps)

    p = sub.add_parser("importance", help="head importance (Hymba App. C): the headline metric with each "
                       "layer's attention path (beta1), SSM path (beta2) or attention head zeroed")
    p.add_argument("run_dir", help="a finished run directory or an export")
    p.add_argument("--layers", help="comma-separated layer indices (default: every layer)")
    p.add_argument("--no-heads", action="store_true", help="paths only, no per-head ablations")
    p.add_argument("--limit", type=positive_int, default=500, help="validation examples per part (default 500)")
    p.add_argument("--out", help="output directory (default RUN_DIR/importance)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    p.set_defaults(func=_importance)

    p = sub.add_parser("report", help="execute analysis/notebooks (report.ipynb, maps.ipynb) on a results "
                       "directory into RESULTS/report/ with HTML exports and the figures as files")
    p.add_argument("results", help="a sweep's results directory (runs/*/run.json)")
    p.add_argument("--storage", help="the sweep's Optuna storage URL (default sqlite:///RESULTS/study.db)")
    p.add_argument("--maps-runs", type=comma_list(), metavar="RUNS",
                   help="run names whose maps and head importance the maps notebook computes "
                   "(default: the first seed of every variant)")
    p.add_argument("--compare", type=comma_list(), metavar="RUN_A,RUN_B",
                   help="two probed runs whose map entropy per layer is compared in a table (Hymba App. D)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel that executes the notebooks")
    p.set_defaults(func=_report)

    p = sub.add_parser("lm-eval", help="lm-eval's own CLI with the model `ablate` registered and the local "
                       "tasks on its include path: ablate lm-eval --model ablate --model_args run_dir=RUN "
                       "--tasks ablate_piqa", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm-eval's arguments")
    p.set_defaults(func=_lm_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # everything after it is lm-eval's (argparse would read its options as ours)
        argv = ["lm-eval", "--", *argv[1:]]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the usage error (or the help)
        return int(exit_.code or 0)
    try:
        return args.func(args) or 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
