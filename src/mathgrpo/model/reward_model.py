"""A learned reward: a sequence-classification model's score of (question, completion), beside the rule rewards.

`rewards.model` names the classifier (a hub id or a local folder of an `AutoModelForSequenceClassification`
model, e.g. an outcome reward model for math). It is loaded once, in eval mode, on the policy's device
(bf16 on a GPU, fp32 on the CPU) and scores a step's completions without gradients, `model_batch_size` at a
time (sorted by length, so that a batch holds texts of similar length; the score of a text does not depend
on its batch). Each text is the question and the completion in the classifier tokenizer's chat template
when it has one (user: the question, assistant: the completion), else `question\\n\\ncompletion`; it is
right-padded (positions as alone) and, beyond `model_max_length` tokens, cut from the left, so that the
end of the completion (the answer) is what is kept.

The score: the single logit of a one-label head; for a two-label head logit[1] - logit[0] (the log-odds of
label 1, "good"). More labels are refused. The raw score is the logged part `reward_model`; what enters the
total is `model_weight` x the score after `model_normalize`:
  none   the raw score;
  group  (score - its group's mean) / (the group's std + 1e-4), the group being the G completions of one
         prompt (consecutive, as the advantages group them), std with n - 1;
  batch  the same over every completion scored in the step (each rank's share under torchrun).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..grading.rewards import MODEL_PART
from .common import ModelError, local_config, resolve_dtype

EPS = 1e-4


class RewardModelError(ModelError):
    """rewards.model cannot be used; the message names the setting and what to do."""


def config_problem(config: Any) -> Optional[str]:
    """Why a transformers config cannot be a reward model (not a sequence classifier, more than 2 labels), or None."""
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        return (f"is a {', '.join(archs)}, not a sequence-classification model (its score head would be random "
                "weights); pass a folder or hub id of an AutoModelForSequenceClassification model, e.g. an outcome "
                "reward model")
    if config.num_labels > 2:
        return (f"has {config.num_labels} labels; a reward model has 1 (the score) or 2 (score = logit[1] - "
                "logit[0]); pass a model with a one- or two-label head")
    return None


def classifier_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on the CPU."""
    return resolve_dtype("auto", torch.device(device))


def render(tok: Any, question: str, completion: str) -> tuple:
    """(text, whether the tokenizer's special tokens are still to be added): the chat template's rendering of
    user = question, assistant = completion when the tokenizer has one, else `question\\n\\ncompletion`."""
    if getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": completion}]
        return tok.apply_chat_template(messages, tokenize=False), False
    return f"{question}\n\n{completion}", True


class RewardModel:
    """A loaded classifier that scores (question, completion) pairs; a batch scorer for `Rewards`."""

    name = MODEL_PART  # the reward part's name (metrics: rewards/reward_model)

    def __init__(self, model: Any, tok: Any, weight: float = 1.0, normalize: str = "group", batch_size: int = 8,
                 max_length: int = 2048, group_size: int = 1) -> None:
        if normalize not in ("none", "group", "batch"):
            raise ValueError(f"rewards.model_normalize={normalize!r} is not one of none, group, batch")
        self.model, self.tok = model, tok
        self.weight, self.normalize, self.batch_size, self.max_length = float(weight), normalize, batch_size, max_length
        self.group_size = group_size
        self.device = next(model.parameters()).device
        self.seconds = 0.0  # wall time of the last call (the GPU finished), for benchmarks

    @classmethod
    def load(cls, name: str, device: Any = "cpu", **settings: Any) -> "RewardModel":
        """The classifier `name` (hub id or local folder) and its tokenizer, in eval mode on `device`."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        device = torch.device(device)
        path = Path(name).expanduser()
        if path.is_dir():
            problem = folder_problem(path)
        elif name.startswith(("/", ".", "~")) or name.count("/") != 1:
            problem = "is no folder (a hub id looks like owner/name); pass the folder of a sequence-classification model"
        else:
            try:
                problem = config_problem(AutoConfig.from_pretrained(name))
            except (OSError, ValueError) as err:
                problem = f"cannot be read from the hub ({str(err).splitlines()[0]}); no hub access? pass a local copy"
        if problem:
            raise RewardModelError(f"rewards.model={name} {problem}")
        source = str(path) if path.is_dir() else name
        try:
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForSequenceClassification.from_pretrained(source, dtype=classifier_dtype(device),
                                                                       use_safetensors=True)
        except (OSError, ValueError) as err:
            raise RewardModelError(f"rewards.model={name}: cannot load the classifier or its tokenizer: "
                                   f"{str(err).splitlines()[0]}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        tok.padding_side, tok.truncation_side = "right", "left"
        model.config.pad_token_id = tok.pad_token_id  # the head pools the last token that is not padding
        model.to(device).eval().requires_grad_(False)
        return cls(model, tok, **settings)

    def param_bytes(self) -> int:
        """Bytes of the classifier's weights on its device."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def _encode(self, questions: list, completions: list) -> list:
        """Token ids of each rendered text, cut from the left to model_max_length."""
        ids = []
        for q, c in zip(questions, completions):
            text, add_special = render(self.tok, q, c)
            row = self.tok(text, add_special_tokens=add_special)["input_ids"]
            if not row:
                raise RewardModelError(f"rewards.model: its tokenizer ({type(self.tok).__name__}) turned a question and "
                                       "completion into no tokens; check that the folder's tokenizer files are the "
                                       "ones the classifier was trained with")
            ids.append(row[-self.max_length:])
        return ids

    @torch.no_grad()
    def raw_scores(self, questions: list, completions: list) -> list:
        """The classifier's score of each (question, completion), `batch_size` texts a forward pass."""
        ids = self._encode(questions, completions)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.tok.pad({"input_ids": [ids[i] for i in chunk]}, padding=True, return_tensors="pt")
            logits = self.model(input_ids=batch["input_ids"].to(self.device), use_cache=False,
                                attention_mask=batch["attention_mask"].to(self.device)).logits.float()  # [n, labels]
            values = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
            for i, v in zip(chunk, values.tolist()):  # the host waits for the GPU here
                scores[i] = v
        return scores

    def normalized(self, scores: list) -> list:
        """The scores after model_normalize (none, group, batch; see the module docstring)."""
        if self.normalize == "none" or not scores:
            return list(scores)
        size = self.group_size if self.normalize == "group" else len(scores)
        if len(scores) % size:
            raise ValueError(f"{len(scores)} reward-model scores do not split into groups of {size}")
        grouped = torch.tensor(scores, dtype=torch.float64).view(-1, size)
        std = grouped.std(dim=1, keepdim=True) if size > 1 else torch.zeros_like(grouped[:, :1])
        return ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + EPS)).reshape(-1).tolist()

    def __call__(self, completions: list, problems: list) -> tuple:
        """(raw scores: the logged part, normalised scores: what model_weight multiplies) of one batch."""
        t0 = time.perf_counter()
        raw = self.raw_scores([p.question for p in problems], completions)
        self.seconds = time.perf_counter() - t0
        return raw, self.normalized(raw)


def load_reward_model(rewards: Any, group_size: int, device: Any) -> Optional[RewardModel]:
    """The reward model a run's `rewards` settings name, on `device`; None when rewards.model is not set."""
    if not rewards.model:
        return None
    return RewardModel.load(rewards.model, device, weight=rewards.model_weight, normalize=rewards.model_normalize,
                            batch_size=rewards.model_batch_size, max_length=rewards.model_max_length,
                            group_size=group_size)


def folder_problem(path: Path) -> Optional[str]:
    """What is wrong with a local folder as a reward model, read from its config.json alone; None when it looks usable."""
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return "is a LoRA adapter folder; merge it (mathgrpo export --merged) and pass the merged model"
    if not (path / "config.json").is_file():
        return "is a folder without config.json; pass the folder of a sequence-classification model"
    config = local_config(str(path))
    if config is None:
        return "has a config.json transformers cannot read; pass the folder of a sequence-classification model"
    return config_problem(config)
