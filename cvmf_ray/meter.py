"""Progress inside a long cell (training, unlearning): epochs done of the total, and images per second.

A training on the published recipe runs for hours; without this the progress line shows `train 0/1` for all
of it. Stages count what they do (`Meter.epochs` wraps their epoch loop, `DeviceLoader` counts the images it
hands out); the Ray layer gives the meter a `send` callable that forwards a reading to the driver's progress
line, at most every `every_s` seconds (at an epoch's end or inside one, whichever comes first). Each reading is
a round trip to the driver, so a cell of many short epochs (digits: 30 in a few seconds) must not send one per
epoch. Without `send` a meter only counts. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

SEND_EVERY_S = 2.0


class Meter:
    def __init__(self, send: Callable[[dict], None] | None = None, every_s: float = SEND_EVERY_S) -> None:
        self.send, self.every_s = send, every_s
        self.total: int | None = None  # epochs, once a stage's epoch loop has started
        self.done = 0  # whole epochs finished
        self.per_epoch: int | None = None  # images in one epoch: known to training, learnt by unlearning
        self.epoch_images = 0  # images counted in the running epoch
        self.images = 0  # images counted since the first one
        self.first_image_at: float | None = None
        self.last_sent = time.monotonic()

    def epochs(self, total: int, first: int = 0, per_epoch: int | None = None) -> Iterator[int]:
        """`range(first, total)` that counts each epoch as it ends (a resumed training starts at `first`)."""
        self.total, self.done, self.per_epoch = total, first, per_epoch
        for epoch in range(first, total):
            yield epoch
            self.done = epoch + 1
            self.per_epoch = self.per_epoch or self.epoch_images or None
            self.epoch_images = 0
            self._send_if_due(time.monotonic())

    def count(self, images: int) -> None:
        """`images` more were processed (called per batch: one clock read, no device sync)."""
        now = time.monotonic()
        if self.first_image_at is None:  # the clock starts here: set-up before the first batch is not throughput
            self.first_image_at = self.last_sent = now
        self.images += images
        self.epoch_images += images
        self._send_if_due(now)

    def reading(self) -> dict:
        """{"epoch": epochs done, with the running epoch's fraction once its size is known; "epochs": the
        total (None before the loop starts); "images_per_s": since the first image}."""
        epoch = float(self.done)
        if self.per_epoch and self.total is not None and self.done < self.total:
            epoch += min(self.epoch_images / self.per_epoch, 0.999)
        elapsed = time.monotonic() - self.first_image_at if self.first_image_at is not None else 0.0
        return {"epoch": round(epoch, 3), "epochs": self.total,
                "images_per_s": round(self.images / elapsed, 1) if elapsed > 0 else None}  # fmt: skip

    def _send_if_due(self, now: float) -> None:
        if self.send is not None and now - self.last_sent >= self.every_s:
            self.last_sent = now
            self.send(self.reading())
