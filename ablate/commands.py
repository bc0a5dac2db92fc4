"""`ablate train | sweep | table` subcommands (the `variants` and `keys` ones live in cli.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ablate.config import ConfigError, ModelConfig, load_variant, override, parse_assignment


def run_config(variant: str, task: str, sets: list[str], where: str = "--set"):
    """RunConfig for VARIANT on TASK with --set overrides: model keys (size.d_model=64) or
    recipe./mqar./text. keys."""
    from ablate.train.run import RunConfig

    cfg = RunConfig(variant=variant, model=load_variant(variant).model, task=task)
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for text in sets:
        key, value = parse_assignment(text, where)
        if key.partition(".")[0] in model_keys:
            key = "model." + key
        cfg = override(cfg, key, value, where)
    return cfg


def _train(args) -> int:
    from ablate.train.run import train

    cfg = run_config(args.variant, args.task, args.set or [])
    if args.wandb:
        cfg = dataclasses.replace(cfg, wandb=True)
    run_dir = Path(args.out) / (args.name or f"{args.variant}-{args.task}-s{cfg.recipe.seed}")
    record = train(cfg, run_dir, progress=not args.quiet)
    print(json.dumps({"run_dir": str(run_dir), "status": record["status"],
                      "tokens_per_s": record.get("tokens_per_s"), **record.get("metrics", {})}, indent=2))
    return 0


def _sweep(args) -> int:
    from ablate.sweep.launch import launch

    return launch(args.file, workers=args.workers, storage_url=args.storage)


def _table(args) -> int:
    from analysis.tables import write_tables

    paths = write_tables(args.results)
    print(Path(paths["markdown"]).read_text())
    print("files:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
    return 0


def _bench(args) -> int:
    from ablate import bench

    sections = args.sections.split(",") if args.sections else list(bench.SECTIONS)
    unknown = sorted(set(sections) - set(bench.SECTIONS))
    if unknown:
        raise ConfigError(f"--sections: unknown {unknown}; allowed: {', '.join(bench.SECTIONS)}")
    sizes = args.sizes.split(",")
    unknown = sorted(set(sizes) - set(bench.SIZES))
    if unknown:
        raise ConfigError(f"--sizes: unknown {unknown}; allowed: {', '.join(bench.SIZES)}")
    modes = args.compile.split(",")
    if set(modes) - {"on", "off"}:
        raise ConfigError(f"--compile: got {args.compile!r}; allowed: a comma list of on, off")
    variants = args.variants.split(",") if args.variants else list(bench.CORE)
    unknown = sorted(set(variants) - set(bench.CORE))
    if unknown:
        raise ConfigError(f"--variants: unknown {unknown}; allowed: {', '.join(bench.CORE)}")
    bench.run(sections, Path(args.out), sizes=sizes, compile_modes=modes, variants=variants,
              decode_compile=args.decode_compile)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train one variant on one task (resumes; skips if finished)")
    p.add_argument("variant")
    p.add_argument("--task", default="mqar", choices=["mqar", "text"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model key (size.d_model=64) or recipe./mqar./text. key; repeatable")
    p.add_argument("--out", default="runs", help="parent directory of the run directory")
    p.add_argument("--name", help="run directory name (default VARIANT-TASK-sSEED)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("sweep", help="run a sweep file's grid through an Optuna study")
    p.add_argument("file", help="sweeps/NAME.yaml")
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite next to the results)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("bench", help="GPU benchmarks (ops, layer, model, inference) into a results file")
    p.add_argument("--sections", help="comma list of sections: scan, conv, attention, layer, model, "
                   "inference (default all)")
    p.add_argument("--out", default="benchmarks/RESULTS.md", help="results file (appended)")
    p.add_argument("--sizes", default="125M,350M", help="model section: comma list of 125M, 350M")
    p.add_argument("--compile", default="on", help="model section: torch.compile blocks: on, off or off,on")
    p.add_argument("--variants", help="model and inference sections: comma list of core variants "
                   "(default all; a wrong name lists them)")
    p.add_argument("--decode-compile", action="store_true",
                   help="inference section: also time the decoding step compiled before capture (minutes per variant)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("table", help="results table (markdown, CSV) and recall-vs-cache plot")
    p.add_argument("results", help="a sweep's results directory (holding runs/*/run.json)")
    p.set_defaults(func=_table)


