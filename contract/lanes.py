"""Lanes and the queues that carry them: one pair of queues per model build.

Small jobs ride `interactive`, everything else `bulk`; every worker consumes both, interactive
first, and a bulk chunk serves waiting interactive chunks between its engine runs
(worker.interjection), so a bulk backlog delays a small request by about one engine run. Queues
are named per build (model name + fingerprint), so a job only ever reaches workers of the build it
was submitted for, also while two builds run side by side during a rolling upgrade.
"""

from __future__ import annotations

from enum import Enum

QUEUE_PREFIX = "embed"


class Lane(str, Enum):
    INTERACTIVE = "interactive"
    BULK = "bulk"


def queue_name(model_name: str, fingerprint: str, lane: Lane) -> str:
    return f"{QUEUE_PREFIX}.{model_name}.{fingerprint}.{lane.value}"


def build_queues(model_name: str, fingerprint: str) -> list[str]:
    """The queues a worker of this build consumes, in the order it must poll them."""
    return [queue_name(model_name, fingerprint, lane) for lane in (Lane.INTERACTIVE, Lane.BULK)]


def lane_for(texts_to_embed: int, interactive_max_texts: int, priority: Lane | None = None) -> Lane:
    """An explicit priority wins; otherwise the size of the work decides."""
    if priority is not None:
        return Lane(priority)
    return Lane.INTERACTIVE if texts_to_embed <= interactive_max_texts else Lane.BULK


def sibling_queue(queue: str, lane: Lane) -> str:
    """The same build's queue of another lane."""
    return f"{queue.rpartition('.')[0]}.{lane.value}"


def lane_of(queue: str) -> Lane | None:
    """The lane a queue of the fleet carries, or None for any other queue."""
    prefix, _, lane = queue.rpartition(".")
    if not prefix.startswith(f"{QUEUE_PREFIX}."):
        return None
    return Lane(lane) if lane in Lane._value2member_map_ else None
