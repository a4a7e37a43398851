"""Continuous batching: the scheduler (serving/scheduler.py) runs every in-flight request on one runner, a
batched decode step plus chunked prefill work per step; a request is a `SequenceRequest` (serving/sequence.py)."""

from chunkcache.serving.config import SchedulerConfig
from chunkcache.serving.scheduler import QueueFull, Scheduler, Timed, WorkerClosed
from chunkcache.serving.sequence import Handle, Sequence, SequenceRequest, one_shot

__all__ = ["Handle", "QueueFull", "Scheduler", "SchedulerConfig", "Sequence", "SequenceRequest", "Timed",
           "WorkerClosed", "one_shot"]
