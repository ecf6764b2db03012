"""Published figures beside our own numbers: loaded from `references.json`, matched by benchmark.

A reference is shown only next to results on the same benchmark (GSM8K test, MATH test, MATH-500:
the full MATH test set and MATH-500 are different problem sets and never match each other). Each
row carries the source's setting (shots, prompting, metric, decoding) and says where it differs
from the run beside it; the evaluated model's own published figures come first. None of these
numbers is measured here, and the report says so in the section title.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import Error

DATA = Path(__file__).with_name("references.json")

# Benchmarks a reference may name, as our benchmark keys name them (bench_key of the bundled sets).
BENCHMARKS = {
    "gsm8k": "GSM8K test set (1,319 problems)",
    "math": "MATH test set (5,000 problems)",
    "math500": "MATH-500 (500 problems of the MATH test set)",
}
DECODING = ("greedy", "sampled", None)
FIELDS = {"model": str, "benchmark": str, "value": (int, float), "shots": (int, type(None)), "prompting": str,
          "metric": str, "decoding": (str, type(None)), "source": str}


class ReferenceDataError(Error, ValueError):
    """The reference data file is malformed; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class Reference:
    """One published figure: `value` percent of `model` on `benchmark` in the source's setting."""

    model: str
    benchmark: str
    value: float
    shots: Optional[int]  # None: the source does not say
    prompting: str  # CoT, tool-integrated, thinking mode, ...
    metric: str  # accuracy, top-1, ...
    decoding: Optional[str]  # greedy, sampled, or None: the source does not say
    source: str  # paper and arXiv id or repository file, table number
    note: str = ""

    def setting(self) -> str:
        """The source's setting in words: shots, prompting, metric, decoding."""
        shots = "shots not stated," if self.shots is None else f"{self.shots}-shot"
        decoding = f", {self.decoding}" if self.decoding else ""
        return f"{shots} {self.prompting}, {self.metric}{decoding}"


def _check(entry: object, where: str) -> Reference:
    if not isinstance(entry, dict):
        raise ReferenceDataError(f"{where}: an entry must be an object, got {type(entry).__name__}")
    missing = [k for k in FIELDS if k not in entry]
    unknown = [k for k in entry if k not in FIELDS and k != "note"]
    if missing or unknown:
        raise ReferenceDataError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
    for key, kind in FIELDS.items():
        if not isinstance(entry[key], kind) or isinstance(entry[key], bool):
            raise ReferenceDataError(f"{where}: {key} is {entry[key]!r}, of the wrong type")
    if entry["benchmark"] not in BENCHMARKS:
        raise ReferenceDataError(f"{where}: benchmark {entry['benchmark']!r} is not one of {', '.join(BENCHMARKS)}")
    if not 0 <= entry["value"] <= 100:
        raise ReferenceDataError(f"{where}: value {entry['value']} is not a percentage (0-100)")
    if entry["shots"] is not None and entry["shots"] < 0:
        raise ReferenceDataError(f"{where}: shots {entry['shots']} is negative")
    if entry["decoding"] not in DECODING:
        raise ReferenceDataError(f"{where}: decoding {entry['decoding']!r} is not greedy, sampled or null")
    if not entry["source"].strip():
        raise ReferenceDataError(f"{where}: source is empty; every figure names where it was read")
    return Reference(**{**entry, "value": float(entry["value"])})


def load_references(path: Optional[Path] = None) -> list:
    """Every reference in `path` (default: the bundled references.json), validated."""
    path = Path(path or DATA)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReferenceDataError(f"{path}: cannot read the reference figures ({err})") from None
    entries = data.get("references") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ReferenceDataError(f"{path}: expected an object with a list under \"references\"")
    return [_check(e, f"{path}: references[{i}]") for i, e in enumerate(entries)]


def benchmark_of(spec: str) -> Optional[str]:
    """The published benchmark a benchmark spec runs (gsm8k, math500), or None when it is none of them.

    The bundled sets and their hub copies (hub:openai/gsm8k, hub:HuggingFaceH4/MATH-500) on their test
    split count; a subset (`--limit`) still runs the same benchmark, on fewer problems.
    """
    from ..data.hub import known_set, parse_spec

    name, _, split = spec.partition("@")
    if split and split != "test":
        return None
    if name in ("gsm8k", "math500"):
        return name
    if name.startswith("hub:"):
        dataset_id, _, hub_split = parse_spec(spec[4:], "test")
        known = known_set(dataset_id)
        if known and known.name in ("gsm8k", "math500") and hub_split == "test":
            return known.name
    return None


def same_model(model_path: str, ref_model: str) -> bool:
    """True when the evaluated model is `ref_model`: the same hub id, or a local folder of the same name."""
    if not model_path:
        return False
    if model_path.lower() == ref_model.lower():
        return True
    return Path(model_path).name.lower() == ref_model.split("/")[-1].lower() and Path(model_path).exists()


def differences(ref: Reference, settings: dict, who: str = "ours") -> str:
    """How the source's setting differs from the run's (shots, decoding), in words; "" when it does not.

    `who`: the run's name in the text ("ours"; "B" in a comparison)."""
    out = []
    ours_shots = settings.get("shots", 0)
    if ref.shots is None:
        out.append(f"shots not stated ({who} {ours_shots})")
    elif ref.shots != ours_shots:
        out.append(f"{ref.shots}-shot ({who} {ours_shots}-shot)")
    ours_decoding = "greedy" if settings.get("greedy", True) else "sampled"
    if ref.decoding is None:
        out.append(f"decoding not stated ({who} {ours_decoding})")
    elif ref.decoding != ours_decoding:
        out.append(f"{ref.decoding} ({who} {ours_decoding})")
    return "; ".join(out)


def matching(spec: str, settings: dict, model_paths: tuple, refs: Optional[list] = None, who: str = "ours") -> list:
    """Rows for the references of the benchmark `spec` runs: the evaluated models' own figures first.

    Each row: model, whose (`this model`, `A`/`B` or ""), value, setting, source, differences, note.
    `model_paths`: (label, path) of each evaluated model ("" label for a single evaluation); `who`: see
    `differences`.
    """
    bench = benchmark_of(spec)
    if bench is None:
        return []
    refs = load_references() if refs is None else refs
    rows = []
    for ref in refs:
        if ref.benchmark != bench:
            continue
        whose = [label or "this model" for label, path in model_paths if same_model(path, ref.model)]
        rows.append({"model": ref.model, "whose": ", ".join(whose), "value": ref.value, "setting": ref.setting(),
                     "differs": differences(ref, settings, who), "source": ref.source, "note": ref.note})
    return sorted(rows, key=lambda r: not r["whose"])  # stable: the file's order otherwise


def other_benchmark_note(spec: str) -> str:
    """For MATH-500 runs: published MATH (full test set) figures exist but are not shown; say so."""
    if benchmark_of(spec) != "math500":
        return ""
    return ("Figures published for the full MATH test set (5,000 problems) are not shown beside MATH-500: "
            "another problem set; docs/evaluation.md lists them.")
