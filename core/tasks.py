"""The model's task vocabulary: one id per application job, shared by every MoE gate."""
from __future__ import annotations

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
