"""The `mathgrpo` command: each subcommand parses its flags and calls its function in `commands/`, which runs the
Python API and prints what it returns; errors a user can fix become one line and an exit code here.

Flags that are not the subcommand's own are `key.sub=value` overrides of the recipe, so
`mathgrpo train grpo.steps=50 run.name=try1` works for every setting in `config.py`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from . import __version__
from .config import DEFAULT_RECIPE, ConfigError, load_config
from .data.problem import DataError
from .diskio import WriteError, describe
from .model.common import ModelError
from .preflight import PreflightError
from .runs import RunError

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


@command("grade", "check whether a predicted answer equals a gold answer, with the parsed forms")
def _grade(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("--pred", required=True, help="the predicted final answer")
    parser.add_argument("--gold", required=True, help="the reference answer")
    parser.add_argument(
        "--rel-tol", type=float, default=None,
        help="relative tolerance for an answer written as a decimal approximation (default 1e-4, what "
        "training rewards and benchmarks use; 0 turns the approximation rule off)",
    )

    def run(args: argparse.Namespace) -> int:
        from .commands.grade import grade

        return grade(args.pred, args.gold, args.rel_tol)

    return run


@command("config", "every setting with its value in the recipe (and overrides) and what it does")
def _config(parser: argparse.ArgumentParser) -> Callable:
    add_recipe_args(parser)

    def run(args: argparse.Namespace) -> int:
        from .config import settings_text

        print(settings_text(load_config(args.recipe, args.overrides)))
        return 0

    return run


@command("data", "look at a data source: `mathgrpo data show SOURCE`")
def _data(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("action", choices=["show"], help="show: a few formatted examples and the counts")
    parser.add_argument("source", help="gsm8k, math500, hub:<id>[:config][@split], a local file, procedural:<name>")
    parser.add_argument("-n", type=int, default=3, help="examples to print")
    parser.add_argument("--split", default=None, help="split (bundled and hub sources; default: train, or the source's only split)")
    parser.add_argument("--format", default="reasoning", help="format preset for the warm-up text")
    parser.add_argument("--question-field", default=None)
    parser.add_argument("--answer-field", default=None)
    parser.add_argument("--solution-field", default=None)
    parser.add_argument("--size", type=int, default=1000, help="problems to generate (procedural sources)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="fail on the first bad row")

    def run(args: argparse.Namespace) -> int:
        from .commands.data import show
        from .data import default_split

        return show(
            args.source, n=args.n, fmt_preset=args.format, split=args.split or default_split(args.source),
            question_field=args.question_field, answer_field=args.answer_field,
            solution_field=args.solution_field, size=args.size, seed=args.seed, strict=args.strict,
        )

    return run


def _training_command(stages: tuple) -> Callable:
    """Set-up for train / sft / grpo: a recipe, overrides and --resume."""

    def setup(parser: argparse.ArgumentParser) -> Callable:
        add_recipe_args(parser)
        parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                            help="continue the run in RUN_DIR from its last checkpoint (overrides apply on top of its saved config)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the resolved settings, what would be loaded from where and the memory plan; start nothing")

        def run(args: argparse.Namespace) -> int:
            from .commands.train import dry_run, train

            return (dry_run if args.dry_run else train)(args.recipe, args.overrides, args.resume, stages)

        return run

    return setup


command("train", "warm-up then GRPO, held-out accuracy before and after (default: the tiny CPU recipe)")(_training_command(("sft", "grpo")))
command("sft", "the supervised format warm-up only")(_training_command(("sft",)))
command("grpo", "GRPO only (from the warm-up's model when the run folder has one)")(_training_command(("grpo",)))


@command("export", "write a run's adapter and, with --merged, a merged model plain transformers loads (--gguf: as GGUF)")
def _export(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("model", metavar="RUN_OR_MODEL", help="run folder, adapter folder or model folder")
    parser.add_argument("--merged", action="store_true", help="also write the adapter merged into the base weights")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="dtype of the merged model (default: the base model's own)")
    parser.add_argument("--gguf", action="store_true", help="also write the merged model as GGUF (llama.cpp; needs mathgrpo[gguf])")
    parser.add_argument("--quant", default="q8_0", choices=["q8_0", "f16"], help="GGUF matrix type (norms stay f32)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/export for a run, LABEL-export for another model folder)")

    def run(args: argparse.Namespace) -> int:
        from .commands.export import export

        return export(args.model, args.out, args.merged, args.dtype, args.quant if args.gguf else None)

    return run


@command("solve", "answer one question with a model and print its reasoning and final answer")
def _solve(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("question", help="the problem text")
    parser.add_argument("--model", required=True, help="run folder, adapter, local model or hub id")
    parser.add_argument("--format", default=None, help="format preset (default: the run's, else reasoning)")
    parser.add_argument("--template", default=None, help="prompt template (default: the run's, else auto)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's rollout.max_new_tokens, else 1024")

    def run(args: argparse.Namespace) -> int:
        from .commands.export import solve

        return solve(args.question, args.model, args.format, args.template, args.max_new_tokens)

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
    add_recipe_args(parser, default=None)  # None: Config defaults, or the run's config.yaml for a run folder

    def run(args: argparse.Namespace) -> int:
        from .commands.evaluate import compare, evaluate
        from .evaluation.benchmark import EvalError
        from .evaluation.references import ReferenceDataError

        try:
            if args.compare:
                flags = {"eval.limit": args.limit, "eval.n": args.n, "eval.shots": args.shots}
                overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
                return compare(args.compare[0], args.compare[1], args.output, args.recipe, overrides)
            return evaluate(args.model, args.bench, args.recipe, args.overrides, args.output, args.limit, args.n, args.shots)
        except (EvalError, ReferenceDataError) as err:
            print(f"mathgrpo eval: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            print(f"mathgrpo eval: {err or 'interrupted'}", file=sys.stderr)
            return 130

    return run


MODEL_COMMANDS = ("train", "sft", "grpo", "eval", "export", "solve")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="mathgrpo", description="Make small open LLMs better at step-by-step math.")
    parser.add_argument("--version", action="version", version=f"mathgrpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(run=setup(p))
    return parser


def main(argv: Optional[list] = None) -> int:
    """Entry point of the `mathgrpo` console command."""
    parser = build_parser()
    # Overrides may come after flags (`eval --limit 3 a.b=1 --n 2 c.d=2`): argparse takes one run of
    # positionals, so later `key=value` words arrive as unknown and are appended to the overrides here.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    if args.command in MODEL_COMMANDS:
        from .model.common import quiet_transformers

        quiet_transformers()
    try:
        return _dispatch(args)
    finally:
        if "mathgrpo.dist" in sys.modules:  # only a command that imported it can have joined a process group
            sys.modules["mathgrpo.dist"].shutdown()  # under torchrun: on every exit path


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; errors a user can fix become one line and an exit code."""
    try:
        return int(args.run(args) or 0)
    except PreflightError as err:
        print(f"mathgrpo {args.command}: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"mathgrpo {args.command}: bad setting: {err}", file=sys.stderr)
        return 2
    except (DataError, ModelError, RunError, FileNotFoundError, FileExistsError) as err:
        print(f"mathgrpo {args.command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write failed: permissions, a full disk (WriteError already says where)
        print(f"mathgrpo {args.command}: {err if isinstance(err, WriteError) else describe(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
