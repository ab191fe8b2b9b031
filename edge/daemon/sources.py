"""The input adapters as named tasks: built from a config, started, restarted by name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from edge.config import Config


class Sources:
    """GNSS and CAN sources of the daemon. ``emit[name]`` is where a source's samples
    go (into the engine); ``clock`` / ``can_clock`` are the drive's clocks under
    ``edge sim`` (None live: each source keeps its own)."""

    def __init__(self, emit: dict[str, Callable[[Any], None]], *,
                 clock: Callable[[], float] | None = None,
                 can_clock: Callable[[], float] | None = None) -> None:
        self._emit = emit
        self._clock = clock
        self._can_clock = can_clock or clock
        self.running: list[tuple[str, Any]] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def build(self, cfg: Config, only: set[str] | None = None) -> list[tuple[str, Any]]:
        """Source objects for ``cfg`` (constructing one checks its config: a bad DBC
        signal is a ConfigError here, before anything runs)."""
        built: list[tuple[str, Any]] = []
        if cfg.gnss.port and (only is None or "gnss" in only):
            from edge.sources.gnss import GnssSource

            built.append(("gnss", GnssSource(cfg.gnss, clock=self._clock)))
        if cfg.can.interface != "none" and (only is None or "can" in only):
            from edge.sources.can import CanSource

            built.append(("can", CanSource(cfg.can, clock=self._can_clock)))
        return built

    def start(self, tg: asyncio.TaskGroup, built: list[tuple[str, Any]]) -> None:
        for name, src in built:
            self.running.append((name, src))
            self.tasks[name] = tg.create_task(src.run(self._emit[name]), name=name)

    async def stop(self, names: set[str]) -> None:
        """Stop the sources ``names`` (a config change restarts them)."""
        for name in names:
            task = self.tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self.running = [(n, s) for n, s in self.running if n != name]

    async def stop_all(self) -> None:
        """At shutdown: every source stops; their health stays readable (the status
        file's last word)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> dict[str, Any]:
        return {name: src.health() for name, src in self.running}
