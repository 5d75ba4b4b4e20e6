"""Recovery fine-tuning: heal a pruned model with LoRA or partial fine-tuning, then export it in
the input's format (plain, or compact: see :mod:`hubprune.formats`).

Two modes, both trained with transformers' `Trainer` (so `accelerate launch` with a DDP, FSDP or
DeepSpeed config runs this same code on many GPUs or machines):

* ``partial`` (*Reassessing Layer Pruning in LLMs*, arXiv 2411.15558): freeze everything and
  train `lm_head`, the final norm and the last `last_k` blocks. Their recipe after removing the
  last blocks: Alpaca-cleaned, 2 epochs, lr 1e-5, batch 64, cutoff 256, k = 3.
* ``lora``: a peft `LoraConfig` on the family's attention and MLP projections (r 8, alpha 16,
  dropout 0.05 by default), merged into the weights afterwards so the published model is a
  checkpoint of the same format as the input; the adapter can also be kept.

A compact input (its blocks may lack attention or MLP) is loaded with hubprune's own copy of its
remote code and written back in the same compact format, remote-code files and `auto_map`
included.

Tied embeddings are never changed silently: when `lm_head` shares its matrix with the input
embeddings, `tied_embeddings` says whether to leave it frozen (default), untie it (lm_head gets
its own trainable copy; the model grows by vocab x hidden) or train the shared matrix.

:func:`recover` reads a run folder and writes a NEW one (the input is never modified) with a
manifest whose `stages["recover"]` records the settings, the data provenance, the trainable
parameters, the tied-embedding choice and the training curve. Checkpoints go to
`<out>.checkpoints` (or `checkpoint_dir`); a re-run with the same settings resumes from the last
one, and they are removed once the run folder is written.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubprune import data as data_mod
from hubprune.arch import ArchAdapter, adapter_for
from hubprune.errors import DataError, RecipeError
from hubprune.plan import Manifest, library_versions, token_ids_sha256
from hubprune.recipe import RECOVERY_NEUTRAL_FIELDS, LoraSection, RecoverySettings, recovery_settings
from hubprune.redact import public_record

__all__ = ["RecoverySettings", "LoraSection", "recover", "recovery_settings", "prepare_data", "TrainingData"]

logger = logging.getLogger("hubprune.recover")

STATE_FILE = "hubprune-recover.json"  # in the checkpoint folder: what the checkpoints belong to
# Stage records that describe the *input* model and would be wrong for the recovered one.
_STALE_STAGES = ("evaluate", "card", "publish")

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


# -- data -----------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Tokenised examples (`input_ids`, `labels`; -100 = no loss) and where they came from."""

    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    info: dict[str, Any] = field(default_factory=dict)


def _load_split(settings: RecoverySettings, split: str) -> tuple[Any, dict[str, Any]]:
    """One split as a `datasets.Dataset` with its provenance (see :func:`hubprune.data.load_rows`)."""
    rows = data_mod.load_rows(
        settings.data,
        config=settings.data_config,
        split=split,
        revision=settings.data_revision,
        what="training data",
        alternative=f"set recover.data to offline text ({data_mod.offline_alternative()}) or a local file",
    )
    info: dict[str, Any] = {"source": settings.data, "kind": rows.kind}
    if rows.kind == "hub-dataset":
        info.update(config=rows.config, split=rows.split, revision=rows.revision)
    else:
        info.update(file_sha256=rows.file_sha256, default_text_column=rows.text_column)
    return rows.dataset, info


def detect_format(settings: RecoverySettings, columns: list[str]) -> str:
    """`auto` -> chat (a messages column), instruction (instruction + output) or text."""
    if settings.format != "auto":
        return settings.format
    if settings.messages_column in columns:
        return "chat"
    if settings.instruction_column in columns and settings.output_column in columns:
        return "instruction"
    return "text"


def _require_columns(columns: list[str], needed: list[str], settings: RecoverySettings, fmt: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"training data '{settings.data}' has no '{missing[0]}' column for the {fmt} format "
            f"(it has: {', '.join(columns)}); name the column in the recovery settings "
            f"(text_column, instruction_column, output_column or messages_column)"
        )


def _prompt_and_answer(row: dict[str, Any], settings: RecoverySettings, fmt: str) -> tuple[list, str]:
    """(conversation without the answer, the answer) for instruction and chat rows."""
    if fmt == "chat":
        messages = list(row[settings.messages_column])
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(
                f"a '{settings.messages_column}' conversation in '{settings.data}' does not end with an "
                "assistant message"
            )
        return messages[:-1], str(messages[-1]["content"])
    instruction = str(row[settings.instruction_column] or "")
    extra = str(row.get(settings.input_column) or "")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": user}], str(row[settings.output_column] or "")


def _encode_conversation(
    tokenizer: Any, row: dict[str, Any], settings: RecoverySettings, fmt: str
) -> dict[str, list[int]] | None:
    """One supervised example: the chat template when the tokenizer has one, else the Alpaca prompt.

    The prompt's tokens get label -100 unless `train_on_prompt`, so the loss is on the answer.
    """
    prompt_messages, answer = _prompt_and_answer(row, settings, fmt)
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(
            prompt_messages, tokenize=False, add_generation_prompt=True
        )
        full_text = tokenizer.apply_chat_template(
            prompt_messages + [{"role": "assistant", "content": answer}], tokenize=False
        )
        if not full_text.startswith(prompt_text):  # a template that rewrites earlier turns
            prompt_text = ""
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    else:
        if fmt == "chat":
            raise DataError("chat-format training data needs a tokenizer with a chat template")
        extra = str(row.get(settings.input_column) or "")
        prompt_text = ALPACA_PROMPT.format(
            with_input=", paired with an input that provides further context" if extra.strip() else "",
            instruction=str(row[settings.instruction_column] or ""),
            input_block=f"### Input:\n{extra}\n\n" if extra.strip() else "",
        )
        prefix = [tokenizer.bos_token_id] if data_mod.tokenizer_adds_bos(tokenizer) else []
        prompt_ids = prefix + tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = prompt_ids + tokenizer(answer, add_special_tokens=False)["input_ids"] + eos
    ids = ids[: settings.seq_len]
    cut = 0 if settings.train_on_prompt else min(len(prompt_ids), len(ids))
    labels = [-100] * cut + ids[cut:]
    if all(label == -100 for label in labels[1:]):
        return None  # the answer was truncated away: nothing to learn from
    return {"input_ids": ids, "labels": labels}


def _pack_text(tokenizer: Any, texts: list[str], seq_len: int) -> list[dict[str, list[int]]]:
    """Concatenate documents (EOS between them) and cut disjoint full windows of `seq_len` tokens."""
    cut = data_mod.token_windows(tokenizer, texts, seq_len=seq_len, policy="disjoint")
    return [{"input_ids": window, "labels": list(window)} for window in cut.windows]


def prepare_data(tokenizer: Any, settings: RecoverySettings) -> TrainingData:
    """Load, format, tokenise and split the training data.

    Plain text is packed into full windows; instruction and chat rows become one example each
    (truncated to `seq_len`). Without `eval_split`, `eval_fraction` of the rows (at most
    `max_eval_examples`, at least one) is held out, chosen with `seed` before formatting so
    held-out text is never trained on.
    """
    train_ds, info = _load_split(settings, settings.split)
    columns = list(train_ds.column_names)
    fmt = detect_format(settings, columns)
    text_column = settings.text_column or info.pop("default_text_column", None) or "text"
    info.pop("default_text_column", None)
    needed = {
        "text": [text_column],
        "instruction": [settings.instruction_column, settings.output_column],
        "chat": [settings.messages_column],
    }[fmt]
    _require_columns(columns, needed, settings, fmt)
    rows = [dict(r) for r in train_ds]
    if settings.eval_split is not None:
        eval_ds, _ = _load_split(settings, settings.eval_split)
        _require_columns(list(eval_ds.column_names), needed, settings, fmt)
        eval_rows = [dict(r) for r in eval_ds][: settings.max_eval_examples]
    else:
        if len(rows) < 2:
            raise DataError(
                f"training data '{settings.data}' has {len(rows)} row(s); need at least 2 to hold one out"
            )
        order = list(range(len(rows)))
        random.Random(settings.seed).shuffle(order)
        held = max(1, min(settings.max_eval_examples, round(len(rows) * settings.eval_fraction)))
        eval_rows = [rows[i] for i in order[:held]]
        rows = [rows[i] for i in sorted(order[held:])]

    def encode(batch: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
        if fmt == "text":
            return _pack_text(
                tokenizer, [str(r[text_column]) for r in batch if r[text_column]], settings.seq_len
            )
        encoded = (_encode_conversation(tokenizer, r, settings, fmt) for r in batch)
        return [e for e in encoded if e is not None]

    train, held_out = encode(rows), encode(eval_rows)
    if not train:
        why = (
            f"no full window of {settings.seq_len} tokens"
            if fmt == "text"
            else f"no example whose answer starts within {settings.seq_len} tokens"
        )
        raise DataError(f"training data '{settings.data}' gives {why}; lower seq_len or give more text")
    if not held_out:
        raise DataError(
            f"the held-out part of '{settings.data}' gives no example of {settings.seq_len} tokens; "
            "raise eval_fraction or lower seq_len"
        )
    all_ids = [t for e in train for t in e["input_ids"]]
    info.update(
        format=fmt,
        split=settings.split,
        eval_split=settings.eval_split
        or f"{settings.eval_fraction:g} of {settings.split} (seed {settings.seed})",
        text_column=text_column if fmt == "text" else None,
        train_rows=len(rows),
        eval_rows=len(eval_rows),
        train_examples=len(train),
        eval_examples=len(held_out),
        train_tokens=len(all_ids),
        train_token_ids_sha256=token_ids_sha256(all_ids),
        chat_template=bool(getattr(tokenizer, "chat_template", None)) and fmt != "text",
    )
    return TrainingData(train, held_out, info)


def _collator(tokenizer: Any) -> Any:
    """transformers' seq2seq collator: right-pads a batch to its longest example; padding never
    counts in the loss (label -100) or in attention (mask 0). A tokenizer without a pad token pads
    with EOS (the id is masked anyway); only a copy is changed, never the tokenizer that is exported."""
    from transformers import DataCollatorForSeq2Seq

    padder = copy.deepcopy(tokenizer)
    padder.padding_side = "right"
    if padder.pad_token is None:
        padder.pad_token = padder.eos_token or padder.convert_ids_to_tokens(0)
    return DataCollatorForSeq2Seq(padder, padding="longest", label_pad_token_id=-100, return_tensors="pt")


# -- what to train --------------------------------------------------------------------------------


def embeddings_tied(model: nn.Module, adapter: ArchAdapter) -> bool:
    """Whether `lm_head` and the input embeddings are one tensor (so training one trains both)."""
    head = model.get_submodule(adapter.lm_head).weight
    embed = model.get_submodule(adapter.embed).weight
    return head is embed or head.data_ptr() == embed.data_ptr()


def untie_embeddings(model: nn.Module, adapter: ArchAdapter) -> None:
    """Give `lm_head` its own copy of the embedding matrix and record that in the config.

    transformers re-ties weights from `config.tie_word_embeddings` (and its tied-keys map) when a
    model is saved or loaded, so both are cleared; the export then stores `lm_head.weight`.
    """
    head = model.get_submodule(adapter.lm_head)
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = {}


def tied_embeddings_note(tied: bool, choice: str, trains_head: bool, vocab_x_hidden: int) -> str:
    """What happens to tied embeddings, in one sentence for the log, the manifest and the card."""
    if not tied:
        return "lm_head and the input embeddings are separate matrices"
    if not trains_head:
        return "lm_head is tied to the input embeddings and is not trained; the embeddings are unchanged"
    if choice == "freeze":
        return (
            "lm_head is tied to the input embeddings, so it is kept frozen and the embeddings are unchanged "
            f"(tied_embeddings: untie trains a separate lm_head, +{vocab_x_hidden:,} parameters; "
            "train trains the shared matrix, changing the input embeddings)"
        )
    if choice == "untie":
        return (
            "lm_head was tied to the input embeddings; it was untied and trained as a separate matrix "
            f"(+{vocab_x_hidden:,} parameters); the input embeddings are unchanged"
        )
    return "lm_head is tied to the input embeddings and the shared matrix was trained: the input embeddings changed"


def _set_trainable_partial(
    model: nn.Module, adapter: ArchAdapter, settings: RecoverySettings, tied: bool
) -> list[str]:
    """Freeze everything, then unfreeze the last `last_k` blocks, the final norm and lm_head.

    A compact model's block may have neither attention nor MLP left: an identity with nothing to
    train, so the last `last_k` blocks are counted among those that still hold weights.
    """
    blocks = [i for i, block in enumerate(adapter.blocks(model)) if any(True for _ in block.parameters())]
    if settings.last_k > len(blocks):
        raise RecipeError(
            f"recover.last_k is {settings.last_k} but the model has only {len(blocks)} blocks left after pruning"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    names = [f"{adapter.layers}.{i}" for i in blocks[len(blocks) - settings.last_k :]]
    names.append(adapter.final_norm)
    if not tied or settings.tied_embeddings != "freeze":
        names.append(adapter.lm_head)
    for name in names:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return names


def _matches_linear(model: nn.Module, target: str) -> bool:
    """Whether the LoRA target name `target` names some linear module of `model` (as peft matches it)."""
    return any(
        isinstance(m, nn.Linear) and (n == target or n.endswith("." + target))
        for n, m in model.named_modules()
    )


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Refuse LoRA target names that match no linear module (peft's own message comes too late)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    short = sorted({name.rsplit(".", 1)[-1] for name in linear})
    unknown = [t for t in targets if not _matches_linear(model, t)]
    if unknown:
        raise RecipeError(
            f"recover.lora.target_modules: {', '.join(repr(u) for u in unknown)} match no linear module "
            f"of this model; its linear modules are: {', '.join(short)}"
        )


def default_lora_targets(model: nn.Module, adapter: ArchAdapter) -> list[str]:
    """The family's LoRA targets that `model` has: a compact model whose blocks all lost their
    attention has no `q_proj` left to adapt."""
    return [t for t in adapter.lora_targets if _matches_linear(model, t)]


def _apply_lora(
    model: nn.Module, adapter: ArchAdapter, settings: RecoverySettings, tied: bool, targets: list[str]
) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = settings.lora_settings
    _check_targets(model, targets)
    if tied and adapter.lm_head in targets:
        if settings.tied_embeddings == "freeze":
            raise RecipeError(
                "recover.lora.target_modules includes lm_head, which shares its weight with the input "
                "embeddings; merging would change them. Set tied_embeddings to untie or train"
            )
        if settings.tied_embeddings == "untie":
            untie_embeddings(model, adapter)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _upcast_trainable(model: nn.Module) -> None:
    """Keep trainable weights in fp32: an lr of 1e-5 vanishes under bf16 rounding (eps ~ 8e-3)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def _precision(settings: RecoverySettings, on_gpu: bool) -> str:
    if settings.precision != "auto":
        if settings.precision != "fp32" and not on_gpu:
            raise RecipeError(f"recover.precision {settings.precision} needs a GPU; use fp32 or auto on CPU")
        return settings.precision
    if not on_gpu:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# -- checkpoints ----------------------------------------------------------------------------------


def _fingerprint(settings: RecoverySettings, run_dir: Path, manifest: Manifest) -> str:
    """What checkpoints belong to: the input run (its creation time) and the training settings."""
    relevant = settings.model_dump(mode="json", exclude=set(RECOVERY_NEUTRAL_FIELDS))
    payload = {"settings": relevant, "from_run": str(run_dir.resolve()), "created_at": manifest.created_at}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest `checkpoint-N` folder that was fully written.

    Trainer writes a checkpoint in place (weights, optimizer, RNG, then `trainer_state.json`), so a
    run killed while saving leaves a partial folder; it is skipped rather than resumed from.
    """
    found = []
    for path in ckpt_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return path
        logger.warning("skipping %s: it was not completely written", path)
    return None


def _resume_point(ckpt_dir: Path, fingerprint: str) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint to resume from (None = start fresh) and the state saved with it."""
    if not ckpt_dir.is_dir():
        return None, {}
    state_file = ckpt_dir / STATE_FILE
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
    last = last_complete_checkpoint(ckpt_dir)
    if last is None:
        return None, state if state.get("fingerprint") == fingerprint else {}
    if state.get("fingerprint") != fingerprint:
        raise RecipeError(
            f"{ckpt_dir} holds checkpoints of a different recovery run (other settings or input); "
            "remove that folder or start over (hubprune recover --restart, hubprune run --redo recover)"
        )
    return str(last), state


class _TrainingDone(Exception):
    """Raised by :class:`_StopWhenDone` to leave `Trainer.train` before a step past `max_steps`."""


def _stop_when_done_callback() -> Any:
    """A TrainerCallback that ends training before a step past `max_steps` would be taken.

    Resuming from the final checkpoint (a run killed after training, before its folder was
    written), transformers 5 still runs one more step (global step max + 1, an extra loss point,
    a later epoch), so the record would not match what was trained. At that step's start the
    checkpoint's weights and state are loaded and nothing has changed them: stop there.
    """
    from transformers import TrainerCallback

    class _StopWhenDone(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                raise _TrainingDone

    return _StopWhenDone()


# -- the stage ------------------------------------------------------------------------------------


def training_curve(
    log_history: list[dict[str, Any]], eval_before: dict[str, float], eval_after: dict[str, float]
) -> dict:
    """The training-curve summary for the manifest and the card."""
    losses = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and e["step"]]
    if "eval_loss" in eval_before:  # the evaluation before training (step 0) is not in a fresh log
        evals.insert(0, (0, float(eval_before["eval_loss"])))
    summary = {
        "train_loss_first": losses[0][1] if losses else None,
        "train_loss_last": losses[-1][1] if losses else None,
        "train_loss_min": min(loss for _, loss in losses) if losses else None,
    }
    if len(losses) > 60:  # keep the manifest readable: at most ~60 points, always the last
        stride = math.ceil(len(losses) / 60)
        losses = losses[::stride] + ([losses[-1]] if (len(losses) - 1) % stride else [])
    before, after = eval_before.get("eval_loss"), eval_after.get("eval_loss")
    return {
        **summary,
        "eval_loss_before": before,
        "eval_loss_after": after,
        "eval_perplexity_before": math.exp(before) if before is not None and before < 700 else None,
        "eval_perplexity_after": math.exp(after) if after is not None and after < 700 else None,
        "train_loss": [[s, round(v, 5)] for s, v in losses],
        "eval_loss": [[s, round(v, 5)] for s, v in evals],
    }


def _trainer(
    model: nn.Module,
    settings: RecoverySettings,
    data: TrainingData,
    ckpt_dir: Path,
    tokenizer: Any,
    on_gpu: bool,
) -> tuple[Any, str]:
    """A Trainer over the prepared examples; returns it and the precision it trains in."""
    from transformers import Trainer, TrainingArguments

    precision = _precision(settings, on_gpu)
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs or 1.0,
        max_steps=settings.max_steps or -1,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        eval_strategy="steps" if settings.eval_steps else "no",
        eval_steps=settings.eval_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_gpu,
        activation_checkpointing=settings.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        report_to="none",
        seed=settings.seed,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=_collator(tokenizer),
    )
    return trainer, precision


def recover(
    run_dir: str | Path,
    out_dir: str | Path,
    settings: RecoverySettings,
    *,
    overwrite: bool = False,
    restart: bool = False,
    recipe: str | None = None,
) -> Manifest:
    """Fine-tune the model in `run_dir` and write the healed model to the new run folder `out_dir`.

    Args:
        run_dir: a run folder written by `hubprune prune` (its `hubprune.json` is read, never changed).
        out_dir: the new run folder; must be empty or absent unless `overwrite`.
        settings: what to train and how (see :class:`RecoverySettings`).
        overwrite: replace a non-empty `out_dir`.
        restart: discard checkpoints of an earlier attempt instead of resuming from them.
        recipe: recipe text for the new manifest (default: the input manifest's).

    Returns:
        The new manifest (also saved as `out_dir/hubprune.json`; on other processes of a
        distributed launch, the manifest as the main process writes it).

    Raises:
        RecipeError: `last_k` beyond the remaining blocks, unknown LoRA targets, checkpoints of
            another run in the checkpoint folder, `out_dir` equal to `run_dir`.
        DataError: missing dataset or column, no example of `seq_len` tokens.
        ExportError: `out_dir` is not empty and `overwrite` is False.
    """
    from accelerate import PartialState
    from transformers import set_seed

    from hubprune.rundir import prepare_out_dir, staged_folder

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise RecipeError("recovery writes a new run folder; --out must differ from the input folder")
    manifest = Manifest.load(run_dir)  # fails early when run_dir is not a run folder
    prepare_out_dir(out_dir, overwrite, source=run_dir)
    ckpt_dir = Path(settings.checkpoint_dir) if settings.checkpoint_dir else Path(f"{out_dir}.checkpoints")
    fingerprint = _fingerprint(settings, run_dir, manifest)
    # Under `accelerate launch` every process runs this function; the main one touches files first.
    on_gpu = torch.cuda.is_available() and settings.device != "cpu"
    dist = PartialState(cpu=not on_gpu)
    if restart and dist.is_main_process and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    dist.wait_for_everyone()
    resume_from, saved_state = _resume_point(ckpt_dir, fingerprint)

    set_seed(settings.seed)
    model, tokenizer, adapter, setup = _setup_model(run_dir, settings, on_gpu)
    with dist.main_process_first():  # one process downloads and caches the dataset, the others reuse it
        data = prepare_data(tokenizer, settings)
    logger.info(
        "data: %d training / %d held-out examples (%s format, %d tokens)",
        data.info["train_examples"], data.info["eval_examples"], data.info["format"], data.info["train_tokens"],
    )  # fmt: skip
    trainer, precision = _trainer(model, settings, data, ckpt_dir, tokenizer, on_gpu)
    trainer.add_callback(_stop_when_done_callback())

    start = time.perf_counter()
    eval_before = saved_state.get("eval_before") or trainer.evaluate()
    if trainer.is_world_process_zero():
        _save_state(ckpt_dir, fingerprint, eval_before, settings)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except _TrainingDone:  # resumed from the final checkpoint: its weights and state are the result
        trainer.is_in_train = False
        logger.info("%s is the last step; nothing left to train", resume_from)
    eval_after = trainer.evaluate()
    train_s = time.perf_counter() - start

    trained_model = _final_model(trainer, settings, run_dir, ckpt_dir)
    if trained_model is None:  # not the main process: wait for the main one to write the folder
        trainer.accelerator.wait_for_everyone()
        return Manifest.load(out_dir) if (out_dir / "hubprune.json").is_file() else manifest
    # Relative to the new folder: the manifest is published, and an absolute path would reveal the
    # machine's layout; `hubprune eval` resolves it against the run folder.
    from_run = Path(os.path.relpath(run_dir.resolve(), out_dir.resolve()))
    record = _record(settings, from_run, setup, data, trainer, precision, train_s)
    record["curve"] = curve = training_curve(trainer.state.log_history, eval_before, eval_after)
    record.update(
        eval_loss_before=_rounded(curve["eval_loss_before"], 4),
        eval_loss_after=_rounded(curve["eval_loss_after"], 4),
        eval_perplexity_before=_rounded(curve["eval_perplexity_before"], 2),
        eval_perplexity_after=_rounded(curve["eval_perplexity_after"], 2),
        resumed_from=Path(resume_from).name if resume_from else None,
    )
    with staged_folder(out_dir, overwrite, source=run_dir) as folder:
        model, export = _export(
            trained_model, adapter, tokenizer, folder, run_dir, settings, setup["export_dtype"]
        )
        record["adapter_dir"] = "adapter" if (folder / "adapter").is_dir() else None
        new = _new_manifest(manifest, model, adapter, export, record, recipe)
        new.save(folder)  # before the rename: the run folder appears with its manifest
    if not settings.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    logger.info(
        "held-out loss %.4f -> %.4f in %d steps (%.0f s); wrote %s",
        curve["eval_loss_before"], curve["eval_loss_after"], record["steps"], train_s, out_dir,
    )  # fmt: skip
    return new


def checkpoint_dtype(folder: Path) -> torch.dtype:
    """The dtype a model folder's weights were saved in (its config's `dtype`), fp32 if unsaid."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    value = getattr(torch, str(name), None)
    return value if isinstance(value, torch.dtype) else torch.float32


def _setup_model(
    run_dir: Path, settings: RecoverySettings, on_gpu: bool
) -> tuple[nn.Module, Any, ArchAdapter, dict[str, Any]]:
    """Load the pruned model on the CPU (the Trainer places it) and make only the chosen weights trainable.

    `dtype: auto` loads fp32 to train on the CPU and the checkpoint's dtype to train on a GPU;
    the export is written in the checkpoint's dtype either way, so recovery never changes it.
    Returns the model (a PeftModel for LoRA), the tokenizer, the adapter and what was set up.
    """
    from hubprune.source import ResolvedSource, load_model

    export_dtype = checkpoint_dtype(run_dir)
    dtype = settings.dtype
    if dtype == "auto" and on_gpu:
        dtype = str(export_dtype).removeprefix("torch.")
    model, tokenizer = load_model(ResolvedSource(str(run_dir), "local", run_dir), dtype=dtype, device="cpu")
    adapter = adapter_for(model)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and settings.seq_len > max_positions:
        raise RecipeError(f"recover.seq_len {settings.seq_len} exceeds the model's {max_positions} positions")
    tied = embeddings_tied(model, adapter)
    head = model.get_submodule(adapter.lm_head).weight
    if settings.mode == "partial":
        if tied and settings.tied_embeddings == "untie":
            untie_embeddings(model, adapter)
        trained = _set_trainable_partial(model, adapter, settings, tied)
    else:
        trained = list(settings.lora_settings.target_modules or default_lora_targets(model, adapter))
        model = _apply_lora(model, adapter, settings, tied, trained)
    considered = adapter.lm_head in trained or settings.mode == "partial"
    note = tied_embeddings_note(tied, settings.tied_embeddings, considered, head.shape[0] * head.shape[1])
    logger.info("tied embeddings: %s", note)
    _upcast_trainable(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "training %s of %s parameters (%s: %s)",
        f"{trainable:,}",
        f"{total:,}",
        settings.mode,
        ", ".join(trained),
    )
    setup = {
        "trained": trained,
        "trainable": trainable,
        "tied": tied,
        "note": note,
        "export_dtype": export_dtype,
    }
    return model, tokenizer, adapter, setup


def _save_state(
    ckpt_dir: Path, fingerprint: str, eval_before: dict[str, float], settings: RecoverySettings
) -> None:
    """What the checkpoints belong to, and the pre-training evaluation (not repeated on resume)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "eval_before": eval_before,
        "settings": settings.model_dump(mode="json"),
    }
    (ckpt_dir / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _export(
    model: nn.Module,
    adapter: ArchAdapter,
    tokenizer: Any,
    folder: Path,
    run_dir: Path,
    settings: RecoverySettings,
    dtype: torch.dtype,
) -> tuple[nn.Module, dict[str, Any]]:
    """Merge LoRA (keeping the adapter in `folder/adapter` if asked), cast back to the input's
    dtype and write it into the (staging) `folder` in the input's format (plain, or the same
    compact format with its remote code); returns the exported model and its record."""
    from hubprune.formats import folder_format

    if settings.mode == "lora":
        if settings.lora_settings.save_adapter:
            model.save_pretrained(folder / "adapter")
        model = model.merge_and_unload()
    model = model.to(dtype).eval()
    model.config.use_cache = True
    return model, folder_format(run_dir).write(model, adapter, tokenizer, folder, source_dir=run_dir)


def _record(
    settings: RecoverySettings,
    from_run: Path,
    setup: dict[str, Any],
    data: TrainingData,
    trainer: Any,
    precision: str,
    train_s: float,
) -> dict[str, Any]:
    """`stages["recover"]`: flat scalars first (the card's settings table), then the detailed records."""
    record: dict[str, Any] = {
        "mode": settings.mode,
        "from_run": str(from_run),
        "data": settings.data,
        "data_kind": data.info["kind"],
        "data_format": data.info["format"],
        "learning_rate": settings.learning_rate,
        "steps": int(trainer.state.global_step),
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "seq_len": settings.seq_len,
        "effective_batch_size": settings.batch_size * settings.grad_accum * trainer.args.world_size,
        "trained_modules": setup["trained"],
        "trainable_params": setup["trainable"],
        "tied_embeddings": setup["note"],
        "tied_embeddings_choice": settings.tied_embeddings if setup["tied"] else None,
        "precision": precision,
        "engine": _engine(trainer),
        "world_size": trainer.args.world_size,
        "train_s": round(train_s, 2),
        "settings": settings.model_dump(mode="json"),
        "data_info": data.info,
    }
    if settings.mode == "partial":
        record["last_k"] = settings.last_k
    else:
        lora = settings.lora_settings
        record.update(lora_r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, lora_merged=True)
    return public_record(record)  # published: a local data file or folder is named `local:<name>`


def _new_manifest(
    manifest: Manifest, model: nn.Module, adapter: ArchAdapter, export: dict, record: dict, recipe: str | None
) -> Manifest:
    """The input's manifest with the recovered model's sizes, export and `recover` record.

    Records of evaluate / card / publish described the input model and are dropped.
    """
    from hubprune.cost import model_cost

    stats = model_cost(model, adapter=adapter)
    stages = {k: v for k, v in manifest.stages.items() if k not in _STALE_STAGES}
    stages["recover"] = record
    changed = ("params_total", "params_non_embedding", "tied_embeddings", "dtype")
    return dataclasses.replace(
        manifest,
        model_after={**manifest.model_after, **{k: stats[k] for k in changed}},
        export=export,
        stages=stages,
        recipe=recipe if recipe is not None else manifest.recipe,
        versions=library_versions(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _engine(trainer: Any) -> str:
    if trainer.is_deepspeed_enabled:
        return "deepspeed"
    if trainer.is_fsdp_enabled:
        return "fsdp"
    return "ddp" if trainer.args.world_size > 1 else "single"


def _final_model(trainer: Any, settings: RecoverySettings, run_dir: Path, ckpt_dir: Path) -> nn.Module | None:
    """The trained model on the main process (None elsewhere).

    Sharded engines (FSDP, DeepSpeed ZeRO-3) hold pieces of the weights on each process;
    `trainer.save_model` gathers a full copy, which the main process reloads. Otherwise the
    trained model is already whole in memory.
    """
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return trainer.model if trainer.is_world_process_zero() else None
    gathered = ckpt_dir / "final"
    trainer.save_model(str(gathered))
    if not trainer.is_world_process_zero():
        return None
    from hubprune.formats import load_folder

    if settings.mode == "lora":
        from peft import PeftModel

        base = load_folder(run_dir, dtype=torch.float32, device="cpu")
        return PeftModel.from_pretrained(base, gathered)
    return load_folder(gathered, dtype=torch.float32, device="cpu")
