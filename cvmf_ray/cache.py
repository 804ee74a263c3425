"""The node-local artifact cache: one long-lived actor per node owns recently finished artifacts in its object store.

Its own module, importing only Ray: the actor's process imports the module that defines the class, and this
one costs nothing beyond Ray (the trial module's `ray.tune` costs ~0.7 s of CPU when a run starts).
"""

from __future__ import annotations

from collections import OrderedDict

import ray

CACHE_NAME = "cvmf-ray-cache-{node}"


@ray.remote(num_cpus=0, max_restarts=-1)
class ArtifactCache:
    """This node's recently finished artifacts, owned in its object store by this long-lived process.

    A trial's own `ray.put` would die with the trial; this actor lives as long as the driver. It keeps at
    most `budget` bytes, evicting the least recently used, and drops what the driver says nobody reads again.
    """

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.entries: OrderedDict[str, tuple] = OrderedDict()  # key -> (ObjectRef of (meta, bytes), size)

    def hold(self, key: str, meta: dict, blob: bytes) -> bool:
        if len(blob) > self.budget:
            return False
        self.release([key])
        self.entries[key] = (ray.put((meta, blob)), len(blob))
        self.used += len(blob)
        while self.used > self.budget:
            self.used -= self.entries.popitem(last=False)[1][1]
        return True

    def lookup(self, key: str) -> list | None:
        """[the ObjectRef] (in a list, so Ray hands over the ref instead of resolving it), or None."""
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return [self.entries[key][0]]

    def release(self, keys: list[str]) -> None:
        for key in keys:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self.used -= entry[1]
