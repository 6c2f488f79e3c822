"""The pretraining loop: `electra-fast pretrain --data DIR --out RUN --hparams ...`.

One process:
    electra-fast pretrain --data data --out run --hparams '{"model_size": "small"}'
The GPUs of one machine:
    torchrun --nproc-per-node 8 -m electra_fast.cli pretrain --data data --out run
Several machines (on each, with its node rank R):
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT --nproc-per-node 8 \\
        -m electra_fast.cli pretrain --data data --out run

Each rank reads its own share of the examples; gradients are averaged by DistributedDataParallel;
only rank 0 logs and saves. Rerunning with the same --out resumes from the newest checkpoint:
model, optimiser, step and data position (the random draws are functions of the step), so that
the run ends as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from electra_fast import amp, distributed, tokenization
from electra_fast._files import open_log, replace_directory, write_atomically
from electra_fast.data import PaddedBatches, PretrainingDataset, ResumableSampler
from electra_fast.model import ElectraForPretraining
from electra_fast.model.modeling import check_encoder_inputs, set_gradient_checkpointing
from electra_fast.model.pretraining import draw_keys
from electra_fast.pretraining.checkpoint import (
    load_checkpoint,
    load_latest,
    resume_point,
    save_checkpoint,
)
from electra_fast.pretraining.hparams import Hparams
from electra_fast.pretraining.optimization import AdamWeightDecay, learning_rate, parameter_groups
from electra_fast.pretraining.skipping import NonFiniteLoss, SkipCounter
from electra_fast.pretraining.step import REPORTED, GraphedStep, TrainStep

TOKENIZER = "tokenizer"  # RUN/tokenizer: a copy of the dataset's
# The sizes two models must share for one's weights to load into the other.
MODEL_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "hidden_act",
                "max_position_embeddings", "type_vocab_size")  # fmt: skip
# What RUN/tensorboard shows (as pretrain/<key>), from each metrics.jsonl record.
TENSORBOARD_SCALARS = (*REPORTED, "lr", "grad_norm", "tokens_per_s")

__all__ = ["NonFiniteLoss", "export", "pretrain"]


def pretrain(
    data: str | os.PathLike,
    out: str | os.PathLike,
    hparams: Hparams,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_at_step: int | None = None,
    device: str | None = None,
) -> dict:
    """Runs (or resumes) a pretraining run; returns a summary. `stop_at_step` ends the run at
    that step as an interruption would (a checkpoint, no export): for tests and time slots.
    `device`: "cuda" or "cpu" (default: $ELECTRA_FAST_DEVICE, else the GPU when there is one)."""
    finished = False
    out = Path(out)
    kind = distributed.device_type(device)
    rank, world = distributed.init(kind)
    device = distributed.device_for(rank, kind)
    with distributed.together("opening the dataset"):  # each machine reads its own copy
        dataset = PretrainingDataset(data)
    distributed.same_everywhere(f"the prepared dataset {data}", dataset.fingerprint())
    vocab_size = dataset.vocab_size
    if hparams.vocab_size is not None and hparams.vocab_size != vocab_size:
        raise ValueError(
            f"hparams vocab_size={hparams.vocab_size} but the dataset's tokenizer has {vocab_size}"
        )
    if hparams.max_seq_length < dataset.max_seq_length:
        raise ValueError(
            f"hparams max_seq_length={hparams.max_seq_length} is shorter than the dataset's "
            f"{dataset.max_seq_length}"
        )
    per_step = hparams.gradient_accumulation_steps * world
    if hparams.train_batch_size % per_step:
        raise ValueError(
            f"train_batch_size={hparams.train_batch_size} must be a multiple of "
            f"gradient_accumulation_steps x world size = {per_step}"
        )
    batch_size = hparams.train_batch_size // per_step
    if hparams.cuda_graphs and (device.type != "cuda" or world > 1):
        raise ValueError(
            "cuda_graphs=true needs one process on a GPU, got "
            + (f"the {device.type} device" if device.type != "cuda" else f"{world} processes")
        )
    ids = dataset.manifest["special_token_ids"]
    special = {
        "mask_token_id": ids["mask"],
        "special_token_ids": (ids["pad"], ids["unk"], ids["cls"], ids["sep"]),
    }
    config = hparams.model_config(vocab_size, special)

    torch.manual_seed(hparams.seed)
    model = ElectraForPretraining(config).to(device)
    set_gradient_checkpointing(model, hparams.gradient_checkpointing)
    optimizer = AdamWeightDecay(
        parameter_groups(model, hparams.weight_decay_rate),
        lr=hparams.learning_rate,
        eps=hparams.adam_epsilon,
    )
    sampler = ResumableSampler(
        len(dataset), seed=hparams.seed, rank=rank, world_size=world, batch_size=batch_size
    )
    if len(sampler) == 0:
        raise ValueError(
            f"{data} holds {len(dataset)} examples, fewer than one batch: {batch_size} per "
            f"device x {world} device(s) (train_batch_size={hparams.train_batch_size}, "
            f"gradient_accumulation_steps={hparams.gradient_accumulation_steps})"
        )
    step, skipped = 0, 0
    saved = resume_point(out / "checkpoints", resume, rank, world)
    if saved is not None:
        state, path = saved
        _check_same_model(state["config"], config, path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step, skipped = state["step"], state.get("skipped", 0)
        if rank == 0:
            print(f"resuming {out} from {path.name} (step {step})", file=sys.stderr)
    elif hparams.init_checkpoint is not None:
        _initialize(model, Path(hparams.init_checkpoint))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        effective = {
            **hparams.to_dict(),
            "vocab_size": vocab_size,
            "world_size": world,
            "per_device_batch_size": batch_size,
            "data": str(Path(data).resolve()),
        }
        write_atomically(out / "config.json", json.dumps(effective, indent=2) + "\n")
        _keep_tokenizer(dataset, out / TOKENIZER)

    skips = SkipCounter(
        device,
        hparams.max_consecutive_nonfinite,
        skipped,
        where=f"The last checkpoint is intact in {out / 'checkpoints'}",
    )
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if hparams.compile:
        trained = torch.compile(trained)
    train_step = TrainStep(
        trained,
        optimizer,
        skips,
        max_grad_norm=hparams.max_grad_norm,
        share=1.0 / hparams.gradient_accumulation_steps,
        autocast=amp.autocast(hparams.precision, device, cache=not hparams.cuda_graphs),
        scaler=amp.grad_scaler(hparams.precision, device),
        row_offset=rank * batch_size,  # masks and samples as one process would
        sync_counts=world > 1,
    )
    runner = GraphedStep(train_step) if hparams.cuda_graphs else train_step
    # The loader draws a seed from its generator at every new iterator: its own generator, so
    # that the global stream (masking, sampling, dropout) is the same after a resume.
    # Each batch read in one call (PaddedBatches) rather than example by example and collated.
    loader = torch.utils.data.DataLoader(
        PaddedBatches(dataset, pad_to=dataset.max_seq_length),
        sampler=torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True),
        batch_size=None,
        generator=torch.Generator().manual_seed(hparams.seed),
        pin_memory=device.type == "cuda",  # so that the copy to the device overlaps its work
    )
    batches, consumed = iter(loader), 0

    def next_batch() -> tuple[dict, int]:
        """The next batch (on the host) and its real tokens, both counted and checked there, so
        that the step itself never waits for the device."""
        nonlocal batches, consumed
        try:
            batch = next(batches)
        except StopIteration:  # an epoch ended: the sampler starts the next one
            batches, consumed = iter(loader), 0
            batch = next(batches)
        consumed += batch_size
        check_encoder_inputs(
            config, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
        return batch, int(batch["attention_mask"].sum())

    # Randomness is a function of (seed, step, micro-batch): the masking and sampling keys come
    # from a generator every rank seeds alike (ranks then differ by row_offset only), dropout
    # from the default generator seeded per rank. A resumed run needs no saved random state.
    # The keys are drawn here, outside the model, and passed in as a tensor: torch.compile
    # cannot trace a generator, and so a compiled step masks and samples as an eager one.
    key_generator = torch.Generator(device=device)

    def step_keys(micro: int) -> torch.Tensor:
        key_generator.manual_seed(_step_seed(hparams.seed, step, micro, "keys"))
        torch.manual_seed(_step_seed(hparams.seed, step, micro, f"dropout/{rank}"))
        return draw_keys(device, key_generator)

    # Every rank takes SIGINT and SIGTERM (torchrun passes them on to its workers, not always
    # at the same step, and a machine's own may reach only its ranks); they stop together.
    stops = distributed.StopRequests(device)
    previous_handlers = {
        s: signal.signal(s, stops.request) for s in (signal.SIGINT, signal.SIGTERM)
    }

    def checkpoint():
        skipped = skips.check(step)  # every rank: too many skipped steps stop all, unsaved
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(consumed),
            "step": step,
            "skipped": skipped,
            "hparams": hparams.to_dict(),
            "config": {**config.__dict__, "special_token_ids": list(config.special_token_ids)},
        }
        save_checkpoint(out / "checkpoints", step, state, hparams.keep_checkpoint_max)

    log = open_log(out / "metrics.jsonl") if rank == 0 else None
    board = _tensorboard(out / "tensorboard", step) if rank == 0 else None
    started, window_tokens, window_start = time.time(), 0, time.time()
    last_stop = stop_at_step if stop_at_step is not None else hparams.num_train_steps
    try:
        while step < min(hparams.num_train_steps, last_stop):
            if stops.agreed():
                break
            logged = log is not None and (
                (step + 1) % hparams.iterations_per_loop == 0 or step == 0
            )
            for micro in range(hparams.gradient_accumulation_steps):
                batch, tokens = next_batch()
                window_tokens += tokens * world
                last = micro == hparams.gradient_accumulation_steps - 1
                runner.micro(batch, step_keys(micro), metrics=logged, last=last)
            rate = learning_rate(
                step, hparams.learning_rate, hparams.num_warmup_steps, hparams.num_train_steps
            )
            runner.set_learning_rate(rate)
            runner.update()  # the host reads nothing back: it queues the next step at once
            step += 1
            skips.poll(step)
            if logged:
                values = runner.read()  # waits for the device: the window's time is real
                elapsed = max(time.time() - window_start, 1e-9)
                record = {
                    "step": step,
                    **{k: round(values[k], 6) for k in REPORTED},
                    "lr": rate,
                    "grad_norm": values["grad_norm"],
                    "tokens_per_s": round(window_tokens / elapsed, 1),
                    "skipped": skips.skipped(),  # rank 0 alone: no raise here
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if board is not None:
                    for key in TENSORBOARD_SCALARS:
                        board.add_scalar(f"pretrain/{key}", record[key], step)
                    board.flush()
                window_tokens, window_start = 0, time.time()
                if progress:
                    _progress(record, step, hparams.num_train_steps, started)
            if step % hparams.save_checkpoints_steps == 0:
                checkpoint()
        checkpoint()
        finished = step >= hparams.num_train_steps
        if finished and rank == 0:
            _export(model, out)
    finally:
        if log is not None:
            log.close()
        if board is not None:
            board.close()
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
    if world > 1:
        # Every rank returns once rank 0 has written the last checkpoint and the export, and
        # all of them then tear gloo down together: a rank that left while another was still
        # writing sometimes aborted in gloo's threads ("terminate called without an active
        # exception").
        dist.barrier()
    if progress and rank == 0:
        state = "finished" if finished else "stopped (resume by rerunning)"
        print(f"\n{state} at step {step} → {out}", file=sys.stderr)
    return {"step": step, "finished": finished, "skipped": skips.check(step)}


def _initialize(model: ElectraForPretraining, directory: Path) -> None:
    """Loads the pair saved in `directory` into `model`, whose sizes must be the same."""
    source = ElectraForPretraining.from_pretrained(directory)
    problems = [
        problem
        for part in ("discriminator", "generator")
        for problem in _differences(
            vars(getattr(source, part).config), getattr(model, part).config, MODEL_FIELDS, part
        )
    ]
    if problems:
        raise ValueError(
            f"init_checkpoint {directory} does not fit the model the hparams describe: "
            f"{'; '.join(problems)}. Set model_size, model_hparam_overrides, embedding_size or "
            "generator_hidden_size to its sizes"
        )
    model.load_state_dict(source.state_dict())


def _tensorboard(directory: Path, step: int):
    """A TensorBoard writer into `directory` when tensorboard is installed, else None. A run
    resumed at `step` hides what an earlier attempt logged after that step (it logs those steps
    again), so that each curve shows every step once."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        return None
    return SummaryWriter(str(directory), purge_step=step + 1 if step > 0 else None)


def _check_same_model(saved: dict, config, path: Path) -> None:
    """A resumed run's hparams must describe the checkpoint's model (else its weights do not
    fit): an error naming each size that differs."""
    names = MODEL_FIELDS + ("generator_hidden_size", "generator_layers",
                            "untied_generator_embeddings")  # fmt: skip
    different = _differences(saved, config, names)
    if different:
        raise ValueError(
            f"{path} holds another model than these hparams describe: {'; '.join(different)}. "
            f"Resume with the run's own hparams (its config.json), or give another --out"
        )


def _differences(saved: dict, config, names: tuple, part: str = "") -> list[str]:
    """'[part ]name saved (hparams: ours)' for each of `names` where the saved model's value
    differs from `config`'s."""
    prefix = f"{part} " if part else ""
    return [f"{prefix}{name} {saved.get(name)} (hparams: {getattr(config, name)})"
            for name in names if saved.get(name) != getattr(config, name)]  # fmt: skip


def _step_seed(seed: int, step: int, micro: int, stream: str) -> int:
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _progress(record: dict, step: int, total: int, started: float) -> None:
    elapsed = time.time() - started
    eta = elapsed / max(step, 1) * (total - step)
    print(
        f"\rstep {step}/{total} loss {record['loss']:.3f} disc_acc {record['disc_acc']:.3f} "
        f"(recall {record['disc_recall']:.2f}) "
        f"{record['tokens_per_s']:.0f} tok/s ETA {eta / 60:.1f} min",
        end="",
        file=sys.stderr,
        flush=True,
    )


def export(run: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """Writes RUN/export/{discriminator,generator} (Hugging Face format) from a checkpoint
    (default: the newest)."""
    from electra_fast.model import ElectraConfig

    run = Path(run)
    if checkpoint is None:
        saved = load_latest(run / "checkpoints")
        if saved is None:
            raise FileNotFoundError(f"no checkpoint in {run / 'checkpoints'}")
        state = saved[0]
    else:
        state = load_checkpoint(checkpoint)
    model = ElectraForPretraining(ElectraConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return _export(model, run)


def _keep_tokenizer(dataset: PretrainingDataset, directory: Path) -> None:
    """Copies the dataset's tokenizer into the run, so that the export can carry it even after
    the original has moved. A tokenizer that is gone or changed since `prepare` is left out,
    with a warning: the export then needs --tokenizer to be finetuned."""
    if (directory / tokenization.CONFIG).is_file():
        return  # kept, and checked, when the run started; a resume keeps that copy
    source = dataset.manifest["tokenizer"]
    try:
        tokenizer = tokenization.load(source)
    except (OSError, ValueError) as error:
        print(f"warning: the dataset's tokenizer cannot be loaded ({error}); the export will "
              "not include it", file=sys.stderr)  # fmt: skip
        return
    if tokenizer.checksum() != dataset.manifest["tokenizer_checksum"]:
        print(f"warning: the tokenizer at {source} changed since the dataset was prepared; the "
              "export will not include it", file=sys.stderr)  # fmt: skip
        return
    tokenizer.save(directory)


def _export(model: ElectraForPretraining, run: Path) -> Path:
    """RUN/export/{discriminator,generator}, each with the run's tokenizer beside the weights
    (when the run kept one), which `electra-fast finetune` then finds by itself. An interrupted
    export leaves the previous one whole: both models are written before either replaces it."""
    tokenizer = None
    if (run / TOKENIZER / tokenization.CONFIG).is_file():
        tokenizer = tokenization.load(run / TOKENIZER)

    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        if tokenizer is not None:
            for part in ("discriminator", "generator"):
                tokenizer.save(staging / part)

    replace_directory(run / "export", fill)
    return run / "export"
