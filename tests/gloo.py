"""Running a function in two processes joined by gloo (torch.multiprocessing, no torchrun), for
tests of what the ranks of a run agree on; each rank's result or error comes back as a dict."""

import datetime
import json
import uuid

import torch.distributed as dist
import torch.multiprocessing as mp

from electra_fast import distributed


def _rank_main(rank, world, root, rendezvous, fn, args):
    # A time limit, so that a rank that never comes fails the test instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))  # fmt: skip
    try:
        outcome = {"result": fn(rank, world, root, *args)}
    except Exception as error:  # noqa: BLE001 - the test looks at which, and what it said
        outcome = {"error": type(error).__name__, "message": str(error)}
    finally:
        distributed.close()
    (root / f"outcome{rank}.json").write_text(json.dumps(outcome))


def run_ranks(fn, root, *args, world: int = 2) -> list[dict]:
    """fn(rank, world, root, *args) on `world` ranks (fn importable: a test module's top-level
    function); per rank {"result": what fn returned (JSON)} or {"error": type, "message": ...}."""
    root.mkdir(parents=True, exist_ok=True)
    rendezvous = root / f"rendezvous-{uuid.uuid4().hex}"  # a new file for every run
    mp.spawn(_rank_main, args=(world, root, rendezvous, fn, args), nprocs=world, join=True)
    return [json.loads((root / f"outcome{r}.json").read_text()) for r in range(world)]
