"""Small multi-process helpers shared by trainers and samplers (torchrun / accelerate launch).

The rule they enforce: a failure on one rank must reach every rank as the same
one-line error, never leave the others waiting at a barrier.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

T = TypeVar("T")


def dist_info() -> tuple[int, int]:
    """(rank, world) of this process, from the launcher's environment variables."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _group_ready(world: int) -> bool:
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def share_outcome(error: BaseException | None, world: int, src: int = 0) -> None:
    """Broadcast rank ``src``'s outcome; every rank raises the same error if ``src`` failed.

    Doubles as a barrier.  The error keeps its type when it is one of ours (the
    class is looked up by module and name on the receiving side), so the CLI
    prints the same one-line message from every rank and exits with the same code.
    """
    if not _group_ready(world):
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    payload = [None if error is None else (type(error).__module__, type(error).__qualname__, str(error),
                                           getattr(error, "errno", None), getattr(error, "strerror", None),
                                           getattr(error, "filename", None))]
    dist.broadcast_object_list(payload, src=src)
    if payload[0] is None:
        return
    if error is not None:
        raise error
    raise _rebuild(*payload[0])


def _rebuild(mod: str, name: str, msg: str, errno=None, strerror=None, filename=None) -> BaseException:
    import importlib

    try:
        cls = getattr(importlib.import_module(mod), name)
        if isinstance(cls, type) and issubclass(cls, OSError) and errno is not None:
            return cls(errno, strerror, filename)  # errno kept: the CLI's one-line disk-full / read-only messages
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(msg)
    except Exception:  # an exception type we cannot rebuild still stops this rank, with the message
        pass
    return RuntimeError(f"rank 0 failed: {name}: {msg}")


def main_first(fn: Callable[[], T], world: int | None = None, rank: int | None = None) -> T | None:
    """Run ``fn`` on rank 0 only, then let every rank go on, or fail with rank 0's error.

    Returns ``fn()``'s value on rank 0 and None elsewhere.  Use it for work that
    must happen once before the others read its result (run folder checks, a
    tokenizer or latent cache written to disk).
    """
    r, w = dist_info()
    rank = r if rank is None else rank
    world = w if world is None else world
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as e:  # shared below, then re-raised here
            error = e
    share_outcome(error, world)
    return result


def barrier(world: int | None = None) -> None:
    """Wait for every rank (creating the gloo group if a launcher has not); nothing when alone."""
    world = dist_info()[1] if world is None else world
    if _group_ready(world):
        import torch.distributed as dist

        dist.barrier()


def broadcast_from_main(value, world: int | None = None):
    """Rank 0's ``value`` on every rank (a picklable object); the value itself when alone."""
    world = dist_info()[1] if world is None else world
    if not _group_ready(world):
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
