"""`ablate ...` entry point. Thin: parse arguments, call the library, print."""

from __future__ import annotations

import argparse
import sys

from ablate.config import ConfigError, ModelConfig, help_lines, load_variant, variant_names


def _variants(args) -> None:
    from tabulate import tabulate

    from ablate.plan import expand
    from ablate.sizing import cache_bytes, count_params

    if args.name and args.plan:
        variant = load_variant(args.name)
        print(f"{variant.name}: {variant.description}")
        print(f"n_meta = {variant.model.n_meta}")
        for spec in expand(variant.model):
            print(spec.describe())
        return
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


def _keys(args) -> None:
    for key, default, text in help_lines(ModelConfig):
        print(f"{key:<28} {default:<22} {text}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("variants", help="list variants with parameters, attn:ssm ratio and cache")
    p.add_argument("name", nargs="?", help="one variant (default: all in variants/)")
    p.add_argument("--plan", action="store_true", help="print the per-layer plan of NAME")
    p.add_argument("--seq-len", type=int, default=8000, help="tokens for the cache column")
    p.add_argument("--dtype", default="fp16", help="cache dtype: fp16 | bf16 | fp32")
    p.set_defaults(func=_variants)

    p = sub.add_parser("keys", help="every model config key with its default and help")
    p.set_defaults(func=_keys)

    from ablate import commands

    commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "variants" and args.plan and not args.name:
        print("ablate variants --plan needs a variant NAME", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
