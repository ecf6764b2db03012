"""The `mathgrpo` command: each subcommand parses its flags, builds a Config, and calls one `main`.

Flags that are not the subcommand's own are `key.sub=value` overrides of the recipe, so
`mathgrpo train grpo.steps=50 run.name=try1` works for every setting in `config.py`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from .config import DEFAULT_RECIPE, ConfigError, load_config

COMMANDS: dict = {}


def command(name: str, help: str) -> Callable:
    """Register `fn(parser)` as the set-up of subcommand `name`; it returns the function to run."""

    def wrap(fn: Callable) -> Callable:
        COMMANDS[name] = (help, fn)
        return fn

    return wrap


def add_recipe_args(parser: argparse.ArgumentParser, default: Optional[str] = DEFAULT_RECIPE) -> None:
    """The recipe flag and free `a.b=c` overrides shared by the subcommands that take a Config."""
    parser.add_argument("--recipe", default=default, help=f"recipe name or YAML path (default: {default})")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override any setting, e.g. grpo.lr=1e-5")


def config_from(args: argparse.Namespace):
    """The Config named by --recipe with the positional overrides applied."""
    return load_config(args.recipe, args.overrides)


@command("grade", "check whether a predicted answer equals a gold answer, with the parsed forms")
def _grade(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("--pred", required=True, help="the predicted final answer")
    parser.add_argument("--gold", required=True, help="the reference answer")

    def run(args: argparse.Namespace) -> int:
        from .grading import grade_main

        return grade_main(args.pred, args.gold)

    return run


@command("data", "look at a data source: `mathgrpo data show SOURCE`")
def _data(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("action", choices=["show"], help="show: a few formatted examples and the counts")
    parser.add_argument("source", help="gsm8k, math500, hub:<id>[:config][@split], a local file, procedural:<name>")
    parser.add_argument("-n", type=int, default=3, help="examples to print")
    parser.add_argument("--split", default="train", help="split (bundled and hub sources)")
    parser.add_argument("--format", default="reasoning", help="format preset for the warm-up text")
    parser.add_argument("--question-field", default=None)
    parser.add_argument("--answer-field", default=None)
    parser.add_argument("--solution-field", default=None)
    parser.add_argument("--size", type=int, default=1000, help="problems to generate (procedural sources)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="fail on the first bad row")

    def run(args: argparse.Namespace) -> int:
        from .data.show import show_main

        return show_main(
            args.source, n=args.n, fmt_preset=args.format, split=args.split,
            question_field=args.question_field, answer_field=args.answer_field,
            solution_field=args.solution_field, size=args.size, seed=args.seed, strict=args.strict,
        )

    return run


@command("eval", "benchmark a model (gsm8k, math500, any data source) or compare two results folders")
def _eval(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("--model", default=None, help="hub id, model folder, adapter folder or run folder (default: model.name)")
    parser.add_argument("--bench", default=None, help="comma-separated benchmarks, e.g. gsm8k,math500 (default: eval.bench)")
    parser.add_argument("--limit", type=int, default=None, help="at most N problems per benchmark (seeded subset)")
    parser.add_argument("--n", type=int, default=None, help="samples per problem (1 = greedy; more sample at rollout.temperature)")
    parser.add_argument("--shots", type=int, default=None, help="few-shot worked examples (base models: 4)")
    parser.add_argument("--output", default=None, help="results folder (default: results/<model>-<benchmarks>-n<n>-<shots>shot)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None, help="compare two results folders (B - A)")
    add_recipe_args(parser, default=None)

    def run(args: argparse.Namespace) -> int:
        from .data import DataError
        from .evaluate import EvalError, main
        from .model import ModelError

        flags = {"eval.limit": args.limit, "eval.n": args.n, "eval.shots": args.shots}
        overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
        try:
            if args.compare:
                return main(None, compare=args.compare, output=args.output)
            return main(load_config(args.recipe, overrides), args.model, args.bench, output=args.output)
        except (EvalError, DataError, ModelError) as err:
            print(f"mathgrpo eval: {err}", file=sys.stderr)
            return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="mathgrpo", description="Make small open LLMs better at step-by-step math.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(run=setup(p))
    return parser


def main(argv: Optional[list] = None) -> int:
    """Entry point of the `mathgrpo` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ConfigError as err:
        print(f"mathgrpo {args.command}: bad setting: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
