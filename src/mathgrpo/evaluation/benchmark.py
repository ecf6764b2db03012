"""Benchmarks: generate answers to a benchmark's problems, grade them with the reward's grader, report.

`run(cfg, model_ref)` runs every benchmark of `eval.bench` (gsm8k, math500, or any data source)
and writes a results folder:
  eval_config.json   the settings that produced the samples (a rerun must match them to resume)
  prompt.json        per benchmark: the prompt template, the few-shot examples, one full prompt
  samples.jsonl      one line per completion, appended as each batch finishes
  metrics.json       per benchmark estimates (metrics.summarise), written at the end
  report.md / report.html, plots/   the report (report.py)
An interrupted run resumes when the same command is run again: samples already in samples.jsonl
are not generated again.

Prompting: zero-shot in the reasoning format, or `eval.shots=k` worked examples first (base
models). The examples are the first k problems with a worked solution of `eval.shots_source`'s
train split (default gsm8k train, for every benchmark: MATH has no bundled train split), written
in the reasoning format, so a base model sees the markers it must produce.
Sampling: `eval.n=1` is greedy (pass@1); `eval.n>1` samples at `rollout.temperature`.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any, Optional

from .. import dist
from ..config import Config, ConfigError, to_dict
from ..data import DataError, LoadReport, load_configured, load_source, locate_source, sft_text
from ..diskio import writing
from .fingerprint import weights_fingerprint
from ..data.formats import Format, get_format, prompts_for, render_prompt, resolved_template
from ..runs import ModelRef, read_json, resolve_model, run_recipe, write_json  # noqa: F401 - resolve_model and run_recipe are part of this module's API
from ..errors import Error
from ..progress import notice, task_progress

RESULTS_DIR = "results"
# How sampled completions are seeded: one stream per (benchmark, problem, sample), so a resumed run
# draws what an uninterrupted one would have drawn (a folder with another rule is not reused).
SAMPLE_SEEDS = "per-problem-sample"
DEFAULT_EVAL_BATCH = 64  # sequences per engine call when rollout.batch_size is 0


class EvalError(Error, RuntimeError):
    """An evaluation cannot start or finish; the message names the file or flag and what to do."""


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during an evaluation; the message says where the finished samples are and how to go on."""


# --- benchmarks and prompts -----------------------------------------------------------------------


def bench_specs(bench: str) -> list:
    """The benchmark specs of `eval.bench` (comma separated, order kept, duplicates dropped)."""
    specs = [s.strip() for s in bench.split(",") if s.strip()]
    if not specs:
        raise ConfigError("eval.bench is empty; pass e.g. --bench gsm8k,math500")
    return list(dict.fromkeys(specs))


def check_benches(bench: str) -> None:
    """Refuse a benchmark spec that names nothing (unknown name or split, missing file) before any model loads,
    in one line that says what to pass (`data.locate_source`: names and splits, no rows read)."""
    for spec in bench_specs(bench):
        try:
            locate_source(spec, "test")
        except DataError as err:
            raise EvalError(f"--bench {spec}: {err}") from None


def bench_key(spec: str) -> str:
    """A benchmark's name in files and reports: the spec with path-unsafe characters replaced."""
    name = Path(spec).stem if Path(spec).suffix in (".jsonl", ".json", ".csv", ".parquet") else spec
    return re.sub(r"[^A-Za-z0-9_.@+-]+", "_", name).strip("_")


def load_benchmark(spec: str, cfg: Config) -> LoadReport:
    """The problems of one benchmark: its test split (a `@split` in the spec wins), seeded `eval.limit` subset."""
    return load_configured(cfg.data, spec, "test", cfg.eval.limit, cfg.eval.seed)


def load_shots(cfg: Config, fmt: Format) -> list:
    """(question, worked solution in `fmt`) for the first `eval.shots` usable train problems of `eval.shots_source`."""
    if cfg.eval.shots == 0:
        return []
    source = cfg.eval.shots_source
    report = load_source(source, split="train", size=max(cfg.data.size, 100), seed=0)
    shots = [(p.question, sft_text(p, fmt)) for p in report.problems]
    shots = [s for s in shots if s[1]][: cfg.eval.shots]
    if len(shots) < cfg.eval.shots:
        raise EvalError(
            f"eval.shots={cfg.eval.shots} but {source} (train split) has only {len(shots)} problems with a worked "
            "solution; lower eval.shots or set eval.shots_source to a source with solutions"
        )
    return shots


def prompt_record(spec: str, problems: list, prompts: list, fmt: Format, tokenizer: Any, cfg: Config, shots: list) -> dict:
    """What prompt.json keeps for one benchmark: the template with a `{question}` slot, the shots, one full prompt."""
    return {
        "format": fmt.name,
        "instruction": fmt.instruction,
        "template": resolved_template(tokenizer, cfg.format.template),
        "system_prompt": fmt.system_prompt,
        "shots_source": f"{cfg.eval.shots_source}@train" if shots else None,
        "shots": [{"question": q, "solution": s} for q, s in shots],
        "prompt_template": render_prompt("{question}", fmt, tokenizer, cfg.format.template, shots),
        "example_id": problems[0].id if problems else None,
        "example_prompt": prompts[0] if prompts else None,
    }


# --- the results folder -----------------------------------------------------------------------------


def settings_fingerprint(cfg: Config, model: ModelRef, weights: str) -> dict:
    """The settings a sample depends on; samples in a folder are reused only when these match.

    weights: `fingerprint.weights_fingerprint` of the model (new weights in the same folder differ).
    `eval.limit` is left out on purpose: a larger limit reuses a smaller one's samples (the subset
    of a larger limit starts with the smaller one's problems, see data.take_subset).
    """
    r = cfg.rollout
    return {
        "model": model.path,
        "weights": weights,
        "n": cfg.eval.n,
        "greedy": cfg.eval.n == 1,
        "temperature": None if cfg.eval.n == 1 else r.temperature,
        "top_p": r.top_p, "top_k": r.top_k, "min_p": r.min_p,
        "max_new_tokens": r.max_new_tokens,
        "shots": cfg.eval.shots,
        "shots_source": cfg.eval.shots_source if cfg.eval.shots else None,
        "format": cfg.format.preset,
        "system_prompt": cfg.format.system_prompt,
        "template": cfg.format.template,
        # only when moved: folders written before the setting existed hold the default placement
        **({"instruction": cfg.format.instruction} if cfg.format.instruction != "system" else {}),
        "seed": cfg.eval.seed,
        "sample_seeds": SAMPLE_SEEDS,
    }


def default_output_dir(cfg: Config, model: ModelRef) -> Path:
    """results/<model>-<benchmarks>-n<n>-<shots>shot: the same command finds the same folder and resumes."""
    benches = "+".join(bench_key(s) for s in bench_specs(cfg.eval.bench))
    return Path(RESULTS_DIR) / f"{model.label}-{benches}-n{cfg.eval.n}-{cfg.eval.shots}shot"


def prepare_output(out: Path, cfg: Config, model: ModelRef) -> dict:
    """Create the results folder, or check that an existing one is ours and was made with the same
    settings and weights; returns the settings fingerprint."""
    info = out / "eval_config.json"
    if out.is_dir() and not info.exists() and any(out.iterdir()):
        raise EvalError(f"--output {out} holds other files and is not a results folder of mathgrpo eval (no "
                        "eval_config.json); pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    saved = json.loads(info.read_text()) if info.exists() else {}
    known = saved.get("file_digests", {})
    fingerprint = settings_fingerprint(cfg, model, weights_fingerprint(model.path, cfg.run.seed, known))
    old = saved.get("fingerprint")
    samples = out / "samples.jsonl"
    if old is not None and samples.exists() and samples.stat().st_size:  # a run stopped before any sample holds none to keep
        diff = {k: (old.get(k), fingerprint.get(k)) for k in {**old, **fingerprint} if old.get(k) != fingerprint.get(k)}
        if diff:
            what = "of other weights (the model changed since they were made)" if "weights" in diff else \
                "made with other settings"
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise EvalError(f"{out} holds samples {what}: {shown}; none are reused: pass --output NEW_DIR, or delete {out}")
    write_json(info, {"fingerprint": fingerprint, "config": to_dict(cfg), "file_digests": known})
    return fingerprint


def read_samples(path: Path) -> dict:
    """Records of samples.jsonl by (bench, id, sample); a later line wins; a torn last line is cut off."""
    records: dict = {}
    if not path.exists():
        return records
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        # An interrupted write left half a line: drop it so the next append starts on a fresh line.
        keep = raw.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(keep)
        raw = raw[:keep]
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records[(rec["bench"], rec["id"], rec["sample"])] = rec
        except (json.JSONDecodeError, KeyError) as err:
            raise EvalError(f"{path}:{n} is not a sample record ({err}); move the file away to start over") from None
    return records


def sample_record(bench: str, problem: Any, sample: int, gen: Any, verdict: Any) -> dict:
    """One samples.jsonl line: the problem, the completion and how it was graded."""
    return {
        "bench": bench,
        "id": problem.id,
        "sample": sample,
        "question": problem.question,
        "gold": problem.answer,
        "completion": gen.text,
        "answer": verdict.answer,
        "correct": verdict.correct,
        "verdict": "correct" if verdict.correct else ("wrong" if verdict.answer is not None else "no answer"),
        "well_formed": verdict.well_formed,
        "length": len(gen.token_ids) - (1 if gen.finished else 0),  # completion tokens, stop token excluded
        "finished": gen.finished,
        "meta": {k: problem.meta[k] for k in ("subject", "level") if k in problem.meta},
    }


# --- generation ------------------------------------------------------------------------------------


def sampling_params(cfg: Config) -> Any:
    """Greedy for n=1, else rollout.temperature/top_p/top_k/min_p."""
    from ..rollout import SamplingParams

    r = cfg.rollout
    if cfg.eval.n == 1:
        return SamplingParams(max_new_tokens=r.max_new_tokens, temperature=0.0)
    if r.temperature == 0:
        raise ConfigError(f"eval.n={cfg.eval.n} samples at rollout.temperature, which is 0 (all samples alike); set rollout.temperature=0.6 or eval.n=1")
    return SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, r.min_p)


def generate_missing(engine: Any, bench: str, todo: list, cfg: Config, fmt: Format, log: Any, progress: Any) -> int:
    """Generate and grade every sample of the (problem, prompt) pairs in `todo`, appending to `log` per batch.

    Under torchrun each rank takes every size-th pair; the graded lines of each batch are gathered
    and rank 0 alone writes them (`log` is None on the other ranks).
    """
    from ..grading.judge import grade
    from ..rollout import sequence_seed

    n = cfg.eval.n
    params = sampling_params(cfg)
    per_call = max(1, (cfg.rollout.batch_size or DEFAULT_EVAL_BATCH) // n)
    todo = sorted(todo, key=lambda t: len(t[1]))  # similar lengths together: less padding
    world = dist.world()
    mine = dist.strided(todo)
    batches = -(-len(todo[:: world.size]) // per_call)  # rank 0 has the most: every rank loops as often
    task = progress.add_task(bench, total=len(todo) * n)
    made = 0
    for b in range(batches):
        chunk = mine[b * per_call : (b + 1) * per_call]
        seeds = [sequence_seed(cfg.eval.seed, bench, problem.id, s) for problem, _ in chunk for s in range(n)]
        gens = engine.generate([prompt for _, prompt in chunk], n, params, seeds) if chunk else []
        lines = []
        for j, gen in enumerate(gens):
            problem = chunk[gen.prompt_index][0]
            verdict = grade(gen.text, problem, fmt)
            lines.append(json.dumps(sample_record(bench, problem, j % n, gen, verdict), ensure_ascii=False))
        lines = dist.gather_concat(lines)
        if log is not None:
            with writing(Path(log.name)):
                log.write("\n".join(lines) + "\n")
                log.flush()
        made += len(lines)
        progress.advance(task, len(lines))
    return made


def token_limit(cfg: Config, net: Any) -> tuple:
    """(tokens a prompt and its completion may take, the setting that says so): model.max_seq_length, or the
    model's own max_position_embeddings where that is smaller (transformers warns past it, then goes on)."""
    positions = getattr(getattr(net, "config", None), "max_position_embeddings", None)
    if positions and positions < cfg.model.max_seq_length:
        return positions, f"the model's max_position_embeddings={positions} (below model.max_seq_length={cfg.model.max_seq_length})"
    return cfg.model.max_seq_length, f"model.max_seq_length={cfg.model.max_seq_length}"


def check_fit(prompts: list, tokenizer: Any, cfg: Config, bench: str, limit: tuple) -> int:
    """The longest prompt in tokens; EvalError, before anything is generated, when it and the completion budget
    (rollout.max_new_tokens) do not fit `limit` (`token_limit`): the line names what to change."""
    longest = max((len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts), default=0)
    budget = cfg.rollout.max_new_tokens
    tokens, setting = limit
    if longest + budget <= tokens:
        return longest
    fixes = [f"model.max_seq_length={longest + budget} (if the model allows)"] if setting.startswith("model.") else []
    if cfg.eval.shots:
        fixes.append(f"fewer eval.shots (now {cfg.eval.shots})")
    if longest < tokens:
        fixes.append(f"rollout.max_new_tokens={tokens - longest}")
    fixes.append("another --bench (a run's own held-out task is its data.source@test)")
    raise EvalError(f"{bench}: the longest prompt is {longest} tokens, + rollout.max_new_tokens={budget} is {longest + budget}, "
                    f"more than {setting}; nothing generated. Try {', or '.join(fixes)}")


def fitted_prompts(benches: dict, cfg: Config, fmt: Format, tok: Any, shots: list, limit: tuple) -> dict:
    """{bench key: (prompts, longest in tokens)} of every benchmark, each checked to fit (`check_fit`) before any
    benchmark generates."""
    fitted = {}
    for spec, report in benches.items():
        key = bench_key(spec)
        prompts = prompts_for(report.problems, fmt, tok, cfg.format.template, shots)
        fitted[key] = (prompts, check_fit(prompts, tok, cfg, key, limit))
    return fitted


# --- the command -------------------------------------------------------------------------------------


def summarise_bench(records: list, cfg: Config, seed: int) -> dict:
    """metrics.summarise with the grader's equivalence grouping maj@k votes."""
    from ..grading.judge import is_equivalent
    from .metrics import summarise

    ks = sorted(set(cfg.eval.k) | {cfg.eval.n})
    return summarise(records, ks, same=is_equivalent, seed=seed)


def evaluate(cfg: Config, model: ModelRef, out: Path, settings: dict) -> dict:
    """Run every benchmark into `out` (resuming what is there) and return the metrics dict.

    settings: the fingerprint `prepare_output` checked, recorded in the metrics.
    """
    import torch

    from ..grading import judge
    from ..model.loading import load_base, set_threads, stop_token_ids
    from ..rollout import make_engine

    set_threads(cfg.run.threads)
    torch.manual_seed(cfg.eval.seed)
    fmt = get_format(cfg.format.preset, cfg.format.system_prompt, cfg.format.instruction)
    benches = {spec: load_benchmark(spec, cfg) for spec in bench_specs(cfg.eval.bench)}
    for spec, report in benches.items():
        notice(report.summary())
        if not report.problems:
            raise EvalError(f"benchmark {spec} has no problems (eval.limit={cfg.eval.limit}); check --bench and --limit")
    shots = load_shots(cfg, fmt)
    model_cfg = type(cfg.model)(**{**cfg.model.__dict__, "name": model.path})
    net, tok = load_base(model_cfg, seed=cfg.run.seed)
    fitted = fitted_prompts(benches, cfg, fmt, tok, shots, token_limit(cfg, net))
    engine = make_engine(cfg.rollout.engine, net, tok, stop_token_ids(tok), cfg.rollout.batch_size,
                         hf_cache=cfg.rollout.hf_cache, skinny_gemm=cfg.rollout.skinny_gemm)
    samples_path = out / "samples.jsonl"
    done = read_samples(samples_path)
    judge.reset_stats()
    prompts_info, per_bench = {}, {}
    main_rank = dist.world().main
    with (open(samples_path, "a", encoding="utf-8") if main_rank else contextlib.nullcontext()) as log, \
            task_progress(cfg.run.progress and main_rank) as progress:
        for spec, report in benches.items():
            key = bench_key(spec)
            prompts, longest = fitted[key]
            prompts_info[key] = prompt_record(spec, report.problems, prompts, fmt, tok, cfg, shots)
            todo = [(p, q) for p, q in zip(report.problems, prompts)
                    if any((key, p.id, s) not in done for s in range(cfg.eval.n))]
            reused = (len(report.problems) - len(todo)) * cfg.eval.n
            notice(f"{key}: {reused} of {len(report.problems) * cfg.eval.n} samples already in {samples_path}; "
                   f"generating {len(todo) * cfg.eval.n}")
            t0 = time.monotonic()
            made = generate_missing(engine, key, todo, cfg, fmt, log, progress) if todo else 0
            per_bench[key] = {"spec": spec, "bad_rows": len(report.bad_rows), "generated": made, "longest_prompt": longest,
                              "max_seq_length": cfg.model.max_seq_length,
                              "reused": reused, "generation_s": round(time.monotonic() - t0, 2)}
    if not main_rank:
        return {}
    write_json(out / "prompt.json", {**read_json(out / "prompt.json"), **prompts_info})
    records = read_samples(samples_path)
    metrics = {"model": model.label, "model_path": model.path,
               "run_dir": str(model.run_dir) if model.run_dir else None,
               "settings": settings, "engine": engine.name, "references": cfg.eval.references, "benchmarks": {}}
    for spec, report in benches.items():
        key = bench_key(spec)
        recs = [records[(key, p.id, s)] for p in report.problems for s in range(cfg.eval.n)]
        metrics["benchmarks"][key] = {**summarise_bench(recs, cfg, cfg.eval.seed), **per_bench[key],
                                      "problem_ids": [p.id for p in report.problems]}
    metrics["grading"] = judge.stats.as_dict()
    return metrics


def apply_model_prompt(cfg: Config, model: ModelRef) -> Optional[dict]:
    """Prompt the model the way its card asks when its chat template is a known one (`formats.model_prompt`).

    Sets format.preset and format.instruction (format.template auto then takes the chat template) before
    the results folder is checked, so the folder records the prompt really used. Off with
    eval.model_prompt=false; never for a training run's folder, whose config says how it was trained.
    """
    from ..data.formats import model_prompt
    from ..model.loading import load_tokenizer

    if not cfg.eval.model_prompt or model.run_dir is not None:
        return None
    known = model_prompt(load_tokenizer(model.path, cfg.model))
    if known is None:
        return None
    cfg.format.preset, cfg.format.instruction = known["preset"], known["instruction"]
    notice(f"prompt: {model.path} has {known['name']}; format.preset={known['preset']}, "
           f"format.instruction={known['instruction']} as its card asks (eval.model_prompt=false keeps format.*)")
    return known


def run(cfg: Config, model_ref: Optional[str] = None, bench: Optional[str] = None, output: Optional[str] = None) -> tuple:
    """Evaluate `model_ref` (default model.name) on `bench` (default eval.bench) into a results folder with its
    report; (metrics, results folder, report path), or (None, folder, None) on a rank other than the first."""
    if bench:
        cfg.eval.bench = bench
    check_benches(cfg.eval.bench)
    if model_ref is None:
        if cfg.model.name == "tiny":
            raise EvalError("no --model: pass a run folder, model or adapter folder, or hub id (--model tiny "
                            "evaluates the untrained built-in model)")
        notice(f"no --model: evaluating model.name={cfg.model.name} of the recipe")
    model = resolve_model(model_ref or cfg.model.name)
    apply_model_prompt(cfg, model)
    out = Path(output or cfg.eval.output_dir or default_output_dir(cfg, model))
    world = dist.init()
    settings = prepare_output(out, cfg, model) if world.main else {}
    notice(f"model: {model.path}" + (f" (run {model.run_dir})" if model.run_dir else "")
           + (f" on {world.size} ranks" if world.active else ""))
    dist.barrier()
    t0 = time.monotonic()
    try:
        metrics = evaluate(cfg, model, out, settings)
    except KeyboardInterrupt:
        kept = len(read_samples(out / "samples.jsonl")) if world.main else 0
        raise EvalInterrupted(f"interrupted; {kept} samples kept in {out / 'samples.jsonl'}; run the same command "
                              "again to go on from there") from None
    if not world.main:
        return None, out, None
    metrics["elapsed_s"] = round(time.monotonic() - t0, 2)
    metrics["benchmarks"] = {**read_json(out / "metrics.json").get("benchmarks", {}), **metrics["benchmarks"]}
    write_json(out / "metrics.json", metrics)  # benchmarks of earlier runs into this folder are kept
    from .report import write_report

    return metrics, out, write_report(out)
