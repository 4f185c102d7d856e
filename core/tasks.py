"""The model's task vocabulary: one id per application job, shared by every MoE gate."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TASKS: tuple[str, ...] = (
    "intent",            # customer service: intent recognition
    "dialogue",          # customer service: multi-turn dialogue
    "retrieval",         # customer service: knowledge retrieval
    "nodule_detection",  # medical imaging: nodule candidates
    "malignancy",        # medical imaging: malignancy rating
    "report_reading",    # medical imaging: radiology report understanding
    "text_to_video",     # video: script to timeline
    "captioning",        # video: captions per shot
    "style",             # video: style transfer
)
NUM_TASKS = len(TASKS)
_IDS = {name: i for i, name in enumerate(TASKS)}


def task_id(name: str) -> int:
    """The id of a task name, e.g. task_id("intent") == 0."""
    try:
        return _IDS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def task_ids(task_id: int | torch.Tensor, num_tasks: int | None, batch: int | None = None,
             device: torch.device | None = None) -> torch.Tensor:
    """Task ids as a LongTensor [1] or [batch] (any count when batch is None), checked to be integers
    in [0, num_tasks) (no range check when num_tasks is None): a negative id would otherwise silently
    pick a row from the end of a per-task table."""
    import torch  # here: the task vocabulary itself is imported by light modules (the CLI)

    task = torch.as_tensor(task_id, device=device)
    if task.dtype == torch.bool or task.is_floating_point() or task.is_complex():
        raise ValueError(f"task ids must be integers, got {task.dtype}")
    task = task.to(torch.long).reshape(-1)
    if batch is not None and task.numel() not in (1, batch):
        raise ValueError(f"task_id must be an int or one id per batch row ({batch}), got {task.numel()}")
    bad = task[(task < 0) | (task >= num_tasks)] if num_tasks is not None else task[:0]
    if bad.numel():
        raise ValueError(f"task id {bad[0].item()} out of range: ids lie in [0, {num_tasks}) "
                         f"(core.tasks.TASKS; resolve names with core.tasks.task_id)")
    return task
