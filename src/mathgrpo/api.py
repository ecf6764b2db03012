"""The Python API for notebooks and scripts: the code the `mathgrpo` command runs, returning values.

    import mathgrpo
    run = mathgrpo.train()                                    # the built-in tiny run (recipes/tiny-cpu.yaml)
    run = mathgrpo.train("qwen3-4b-grpo", model={"name": "/models/Qwen3-4B-Base"}, grpo={"steps": 50})
    run.summary["accuracy_after_grpo"], run.metrics()         # summary.json; rows of grpo/metrics.jsonl
    res = run.evaluate(bench="procedural:arith@test")         # Results: .table, .metrics; its report shows inline
    mathgrpo.compare(before, res)                             # Comparison: B - A with a paired interval
    run.solve("12+30=").answer
    run.export(merged=True, gguf="q8_0")

Settings are given as on the command line: a recipe (name or YAML path), then each section as a keyword
argument (`grpo={"steps": 50}`) and/or `overrides=["grpo.steps=50"]`. What the command would print as one
line after `mathgrpo <command>:` is raised here as a `mathgrpo.Error` (ConfigError, DataError, ModelError,
PreflightError, TrainingStopped, ...) with that message, and nothing of the library's insides in the traceback.
The command line (`cli.py`, `commands/`) runs these same calls and prints what they return; while they run,
the library's lines (`progress.notice`) and progress bars show in a terminal and in a notebook alike.
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .errors import Error

PathLike = Union[str, Path]


def _user_errors(fn: Callable) -> Callable:
    """Raise a mathgrpo.Error from the API call itself: the message is the CLI's line, the frames inside the
    library are left out of the traceback (they explain nothing a user can change)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Error as err:
            raise err.with_traceback(None) from None

    return call


def _dotted(overrides: Optional[list], sections: dict) -> list:
    """`key.sub=value` strings from `overrides` and from section keyword arguments ({"grpo": {"steps": 50}});
    values are written as JSON, which the config reader parses as YAML (strings quoted, null, lists, maps)."""
    out = list(overrides or [])
    for section, values in sections.items():
        if not isinstance(values, dict):
            from .config import ConfigError

            raise ConfigError(f"{section}={values!r}: pass a section as a dict of its settings, e.g. "
                              f"{section}={{'<key>': <value>}}, or use overrides=['{section}.<key>=<value>']")
        out += [f"{section}.{key}={json.dumps(value)}" for key, value in values.items()]
    return out


def _config(recipe: Optional[str], settings: list) -> Any:
    """The Config of `recipe` with `settings` on top (Unsloth imported first when it is the backend)."""
    from .config import DEFAULT_RECIPE, load_config

    cfg = load_config(recipe or DEFAULT_RECIPE, settings)
    if cfg.model.backend == "unsloth":
        from .model.unsloth_backend import import_unsloth

        import_unsloth()  # before anything imports transformers, so all of its patches apply
    return cfg


def _quiet() -> None:
    from .model.common import quiet_transformers

    quiet_transformers()


def _iframe(page: Path, height: int = 720) -> str:
    """An HTML report inside an iframe, so that its styles stay out of the notebook's page."""
    doc = html.escape(Path(page).read_text(encoding="utf-8"), quote=True)
    return f'<iframe srcdoc="{doc}" style="width:100%;height:{height}px;border:1px solid #ddd"></iframe>'


# ---- what the calls return ----------------------------------------------------------------------------


@dataclass
class Answer:
    """One question answered: the reasoning, the final answer (None when it gave none), the raw completion."""

    question: str
    reasoning: Optional[str]
    answer: Optional[str]
    well_formed: bool
    text: str
    format: str = "reasoning"  # the format preset the completion was read in


@dataclass
class Results:
    """A results folder of an evaluation: metrics.json, samples.jsonl, report.html."""

    path: Path

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def table(self) -> list:
        """One row per benchmark: problems, accuracy with its 95% interval, format adherence, mean length."""
        return [{"benchmark": key, "problems": m["problems"], "accuracy": m["accuracy"], "ci_low": m["ci"][0],
                 "ci_high": m["ci"][1], "format": m["format_adherence"], "mean_length": m["length"]["mean"]}
                for key, m in self.metrics["benchmarks"].items()]

    def samples(self) -> list:
        """Every graded completion (samples.jsonl)."""
        from .tracking import read_jsonl

        return read_jsonl(self.path / "samples.jsonl")

    def _repr_html_(self) -> str:
        return _iframe(self.report)


@dataclass
class Comparison:
    """B minus A on the problems two results folders share (compare.json, compare.html in `path`)."""

    path: Path
    result: dict

    @property
    def report(self) -> Path:
        return self.path / "compare.html"

    @property
    def table(self) -> list:
        """One row per shared benchmark: accuracies, B - A with its paired 95% interval, problems fixed and broken."""
        return [{"benchmark": key, "shared": c["shared"], "a": c["accuracy_a"], "b": c["accuracy_b"], "diff": c["diff"],
                 "ci_low": c["ci"][0], "ci_high": c["ci"][1], "fixed": len(c["fixed"]), "broken": len(c["broken"])}
                for key, c in self.result["benchmarks"].items()]

    def _repr_html_(self) -> str:
        return _iframe(self.report)


@dataclass
class Plan:
    """What `mathgrpo train --dry-run` says: the settings, the device's choices, the inputs, the memory plan."""

    lines: list
    ok: bool  # every input is there

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


@dataclass
class Run:
    """A run folder made by `train`: its summary, metrics and samples, and what can be done with it."""

    path: Path

    @property
    def summary(self) -> dict:
        from .runs import read_json

        return read_json(self.path / "summary.json")

    @property
    def config(self) -> Any:
        from .config import load_config

        return load_config(str(self.path / "config.yaml"))

    def metrics(self, stage: str = "grpo") -> list:
        """The per-step rows of `<stage>/metrics.jsonl` (stage: grpo or sft)."""
        from .tracking import read_jsonl

        return read_jsonl(self.path / stage / "metrics.jsonl")

    def samples(self) -> list:
        """The completions GRPO logged every run.sample_every steps (grpo/samples.jsonl)."""
        from .tracking import read_jsonl

        return read_jsonl(self.path / "grpo" / "samples.jsonl")

    def evaluate(self, bench: Optional[str] = None, **kwargs: Any) -> Results:
        """`evaluate` of this run's latest model (its own settings by default)."""
        return evaluate(str(self.path), bench, **kwargs)

    def solve(self, question: str, **kwargs: Any) -> Answer:
        return solve(question, str(self.path), **kwargs)

    def export(self, out: Optional[PathLike] = None, merged: bool = True, gguf: Optional[str] = None,
               dtype: Optional[str] = None) -> dict:
        """`export` of this run (default folder: `<run>/export`)."""
        return export(str(self.path), out, merged, gguf, dtype)

    def resume(self, overrides: Optional[list] = None, **sections: Any) -> "Run":
        """Continue this run from its last checkpoint, settings changed by `overrides` / sections (more steps)."""
        return train(resume=self.path, overrides=overrides, **sections)

    @property
    def headline(self) -> Optional[str]:
        """Held-out accuracy before and after GRPO in one line (None before GRPO has finished)."""
        s = self.summary
        before, after = s.get("accuracy_before_grpo"), s.get("accuracy_after_grpo")
        if before is None or after is None:
            return None
        return (f"held-out accuracy: {before:.1%} before GRPO -> {after:.1%} after "
                f"({(after - before) * 100:+.1f} points, {s.get('steps')} steps)")

    def _repr_html_(self) -> str:
        s = self.summary
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(s[k]))}</td></tr>"
                       for k in ("accuracy_before_grpo", "accuracy_after_grpo", "steps", "wall_seconds") if k in s)
        line = f"<p>{html.escape(self.headline)}</p>" if self.headline else ""
        return f"<b>run</b> <code>{html.escape(str(self.path))}</code>{line}<table>{rows}</table>"


# ---- the calls ----------------------------------------------------------------------------------------


@_user_errors
def check(recipe: Optional[str] = None, *, overrides: Optional[list] = None, resume: Optional[PathLike] = None,
          stages: tuple = ("sft", "grpo"), **sections: Any) -> Plan:
    """The dry run of `train` with these settings (or those of the run folder `resume`, with `overrides` on top):
    what the device chooses (dtype, engine), whether every model and data source is there, and the memory plan;
    starts nothing."""
    from .preflight import dry_run
    from .runs import resumed_config

    settings = _dotted(overrides, sections)
    cfg = resumed_config(str(resume), settings) if resume else _config(recipe, settings)
    return Plan(*dry_run(cfg, stages))


@_user_errors
def train(recipe: Optional[str] = None, *, overrides: Optional[list] = None, resume: Optional[PathLike] = None,
          stages: tuple = ("sft", "grpo"), **sections: Any) -> Run:
    """Warm-up then GRPO (or `stages`) in a new run folder, or continue the run folder `resume`; the Run.

    Ctrl-C (the notebook's stop button) saves a checkpoint first; `train(resume=run.path)` goes on from it.
    """
    from . import dist
    from .preflight import device_choices
    from .progress import notice
    from .runs import discard_if_unused
    from .training.pipeline import run_stages

    _quiet()
    settings = _dotted(overrides, sections)
    cfg = None if resume else _config(recipe, settings)
    dist.init()
    cfg, run_dir = _start(cfg, recipe, str(resume) if resume else None, settings, stages)
    try:
        notice(f"run: {run_dir}")
        notice(device_choices(cfg, brief=True))
        run_stages(cfg, run_dir, stages)
    except BaseException:
        if not resume and dist.world().main:
            discard_if_unused(run_dir)
        raise
    return Run(run_dir)


def _start(cfg: Any, recipe: Optional[str], resume: Optional[str], overrides: list, stages: tuple) -> tuple:
    """(config, run folder): a new folder holding the config, or the saved config (plus overrides, e.g. more steps)
    of the run `resume`. The model, data sources and device are checked first (preflight), so a run that cannot
    start writes nothing."""
    from . import dist
    from .config import save_config
    from .preflight import require, training_checks
    from .runs import new_run_dir, resumed_config

    if resume:
        run_dir = Path(resume)
        cfg = resumed_config(resume, overrides)
        require(training_checks(cfg, stages))
        dist.barrier()  # every rank has read the file before rank 0 rewrites it
        if overrides and dist.world().main:
            save_config(cfg, run_dir / "config.yaml")
        return cfg, run_dir
    require(training_checks(cfg, stages))
    if dist.world().main:
        run_dir = new_run_dir(cfg, recipe)  # holds config.yaml already
    run_dir = Path(dist.gather(str(run_dir) if dist.world().main else None)[0])
    return cfg, run_dir


@_user_errors
def evaluate(model: Optional[PathLike] = None, /, bench: Optional[str] = None, *, recipe: Optional[str] = None,
             limit: Optional[int] = None, n: Optional[int] = None, shots: Optional[int] = None,
             output: Optional[PathLike] = None, overrides: Optional[list] = None, **sections: Any) -> Results:
    """Benchmark `model` (a run folder, model or adapter folder, hub id; default the recipe's model.name) on
    `bench` (comma-separated; default eval.bench): per-sample records, metrics and a report in a results folder.

    `model` is positional only, so that a `model={"dtype": ...}` section can be given as for `train`."""
    from .config import load_config
    from .evaluation.benchmark import run, run_recipe

    _quiet()
    flags = {"eval.limit": limit, "eval.n": n, "eval.shots": shots}
    settings = _dotted(overrides, sections) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    model = str(model) if model is not None else None
    cfg = load_config(recipe or run_recipe(model), settings)
    _, out, _ = run(cfg, model, bench, str(output) if output else None)
    return Results(Path(out))


@_user_errors
def compare(a: Union[Results, PathLike], b: Union[Results, PathLike], output: Optional[PathLike] = None,
            references: bool = True) -> Comparison:
    """B minus A on the problems both results share, with a paired bootstrap interval; report in `output` (default B)."""
    from .evaluation.compare import compare_folders

    a_dir, b_dir = (str(x.path if isinstance(x, Results) else x) for x in (a, b))
    result, page = compare_folders(a_dir, b_dir, str(output) if output else None, references)
    return Comparison(Path(page).parent, result)


@_user_errors
def solve(question: str, model: PathLike, *, format: Optional[str] = None, template: Optional[str] = None,
          max_new_tokens: Optional[int] = None) -> Answer:
    """Answer one question greedily with `model` (a run folder takes the run's format, template and length)."""
    from .evaluation.solve import solve as solve_one, solve_settings

    _quiet()
    fmt, tmpl, limit = solve_settings(str(model), format, template, max_new_tokens,
                                      changed_by="format=, template= and max_new_tokens=")
    parsed, gen = solve_one(question, str(model), fmt, tmpl, limit)
    return Answer(question, parsed.reasoning, parsed.answer, parsed.well_formed, gen.text, fmt)


@_user_errors
def export(model: PathLike, out: Optional[PathLike] = None, merged: bool = True, gguf: Optional[str] = None,
           dtype: Optional[str] = None) -> dict:
    """Write the adapter (when there is one), with `merged` a merged safetensors model, with `gguf` (q8_0 or f16)
    a GGUF file; returns the paths by kind. `model`: a run folder (its latest model), an adapter or model folder;
    `out`: default `<run>/export` for a run, else `<model label>-export` (`r1-ckpt-000050-export`)."""
    from .model.common import adapter_base, is_adapter_dir
    from .model.export import export as export_model
    from .runs import export_dir, in_run_folder, resolve_model

    _quiet()
    ref = resolve_model(str(model))
    src = ref.path
    copy_base = is_adapter_dir(Path(src)) and in_run_folder(Path(adapter_base(Path(src))))  # the run may not last
    return export_model(src, Path(out) if out else export_dir(str(model), ref), merged, dtype, gguf, copy_base)


@_user_errors
def grade(pred: str, gold: str, rel_tol: Optional[float] = None) -> Any:
    """The grader's decision on one answer pair: `.equal`, how each side was read and the path that decided.
    rel_tol: for an answer written as a decimal approximation (default 1e-4, as rewards and benchmarks; 0: off)."""
    from .grading.judge import APPROX_REL_TOL, DEFAULT_TIMEOUT_S, decide

    return decide(pred, gold, DEFAULT_TIMEOUT_S, APPROX_REL_TOL if rel_tol is None else rel_tol)
