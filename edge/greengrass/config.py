"""Component configuration from the Greengrass nucleus, with validated hot reload.

A recipe's ``DefaultConfiguration`` mirrors the TOML config (same tables, same keys) plus
Greengrass' own ``accessControl``. ``component_config_to_dict`` turns that JSON into the
dict ``edge.config.config_from_dict`` takes; ``GreengrassConfigWatcher`` then:

* reads it with GetConfiguration at start (invalid at start: ``ConfigError``, the
  daemon exits non-zero as it would with a bad TOML file);
* answers SubscribeToValidateConfigurationUpdates events (sent by the nucleus *before*
  a deployment changes the configuration) with SendConfigurationValidityReport
  ACCEPTED / REJECTED, so an invalid fleet deployment fails and rolls back instead of
  reaching the daemon;
* on SubscribeToConfigurationUpdate (after a change, e.g. a local deployment or a
  nucleus that does not validate) re-reads the configuration, validates it and either
  calls ``on_config(new)`` or keeps the old one, logging the reason once and keeping it
  in ``health()``. Optionally (``update_state_on_reject``) it reports UpdateState
  ERRORED; off by default because the nucleus restarts an ERRORED component and marks
  it BROKEN after three tries, which is the opposite of "keep running on the old
  config".

The IPC calls and subscriptions are ``edge.greengrass.config_ipc.ConfigIpc``'s (one per
connection; its callbacks run on the asyncio loop). Updates are coalesced (the latest
configuration is re-read), so nothing queues up without bound. A lost connection is
reopened after the capped, jittered ``edge.core.backoff.Backoff`` (a refused token: at
the cap at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import time
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Self

import structlog

from edge.config import Config, config_from_dict
from edge.core.backoff import Backoff
from edge.errors import ConfigError, EdgeError, UplinkAuthError, UplinkError
from edge.greengrass.config_ipc import ConfigIpc
from edge.logconf import Once

log = structlog.get_logger()

# Keys of a component configuration that belong to Greengrass, not to our Config.
GREENGRASS_ONLY_KEYS = frozenset({"accessControl"})
THING_ENV = "AWS_IOT_THING_NAME"  # set by the nucleus for every component
ZONES_ENV = "VEHICLE_EDGE_ZONES"  # set by the recipe: com.vehicleedge.Zones' zones file
ROADS_ENV = "VEHICLE_EDGE_ROADS"  # set by the recipe: com.vehicleedge.Roads' road index
WORK_ENV = "VEHICLE_EDGE_WORK"  # set by the recipe: the component's work dir (relative paths)

OnConfig = Callable[[Config], Awaitable[None] | None]


def roads_offered(env: Mapping[str, str] | None = None) -> Path | None:
    """The road index the Daemon's recipe points at (com.vehicleedge.Roads' file), if any:
    whether that component is deployed is the fleet's choice."""
    path = (os.environ if env is None else env).get(ROADS_ENV)
    return Path(path) if path else None


def component_config_to_dict(
    value: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Component configuration JSON -> the dict ``config_from_dict`` takes.

    Drops Greengrass' own keys (``accessControl``) and JSON nulls (TOML has no null: an
    absent key means the default); turns integral floats back into ints (the Java
    nucleus may hand ``9600`` back as ``9600.0``); fills ``thing`` from
    ``AWS_IOT_THING_NAME`` when the configuration leaves it empty, and ``rules.zones``
    from ``VEHICLE_EDGE_ZONES`` (the recipe points it at com.vehicleedge.Zones' file)
    when the configuration leaves it unset or null, and ``roads.index`` from
    ``VEHICLE_EDGE_ROADS`` (com.vehicleedge.Roads' index) likewise. Neither file need
    exist yet: the daemon's watchers load them when the components install them (until
    then health says which one is missing). A string where
    a key wants a number or a boolean is converted when it reads as one: nucleus lite
    stores the scalars of a YAML recipe or deployment as strings (``baud: 9600`` arrives
    as ``"9600"``).
    """
    e = os.environ if env is None else env
    out: dict[str, Any] = _from_strings(_clean(
        {k: v for k, v in value.items() if k not in GREENGRASS_ONLY_KEYS}
    ), Config)
    if not out.get("thing") and e.get(THING_ENV):
        out["thing"] = e[THING_ENV]
    zones = e.get(ZONES_ENV)
    rules = out.get("rules", {})
    if zones and isinstance(rules, Mapping) and "zones" not in rules:
        out["rules"] = {**rules, "zones": zones}
    roads_index = e.get(ROADS_ENV)
    roads = out.get("roads", {})
    if roads_index and isinstance(roads, Mapping) and "index" not in roads:
        out["roads"] = {**roads, "index": roads_index}
    return out


def _from_strings(value: dict[str, Any], cls: type) -> dict[str, Any]:
    """``value`` with strings turned into the int, float or bool its ``cls`` field wants
    (where they read as one; anything else is left for validation to name)."""
    hints = typing.get_type_hints(cls)
    out = dict(value)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        v, t = out[f.name], hints[f.name]
        if isinstance(t, type) and dataclasses.is_dataclass(t) and isinstance(v, dict):
            out[f.name] = _from_strings(v, t)
        elif isinstance(v, str):
            out[f.name] = _scalar_from_string(v, t)
    return out


def _scalar_from_string(text: str, hint: Any) -> Any:
    kinds: set[Any] = set()
    for a in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        if typing.get_origin(a) is typing.Literal:
            kinds.update(type(x) for x in typing.get_args(a))
        else:
            kinds.add(a)
    if str in kinds or Path in kinds:
        return text
    s = text.strip()
    if bool in kinds and s.lower() in ("true", "false"):
        return s.lower() == "true"
    for kind in (int, float):
        if kind in kinds:
            with contextlib.suppress(ValueError):
                return kind(s)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value if v is not None]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def config_from_component(
    value: Mapping[str, Any], *, base: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate a component configuration into a ``Config`` (raises ``ConfigError``).

    Relative paths resolve against ``base``, else ``$VEHICLE_EDGE_WORK`` (the recipe sets
    it to the component's work dir), else the current directory."""
    e = os.environ if env is None else env
    return config_from_dict(component_config_to_dict(value, env=e), base=work_base(base, e))


def work_base(base: Path | None, env: Mapping[str, str]) -> Path:
    """Where relative paths resolve: ``base``, else ``$VEHICLE_EDGE_WORK`` (the
    component's work dir), else the current directory."""
    return base or Path(env.get(WORK_ENV) or Path.cwd())


class GreengrassConfigWatcher:
    """Async context manager: the component's Config, kept current and valid."""

    def __init__(
        self,
        *,
        on_config: OnConfig,
        base: Path | None = None,
        ipc_socket: str | None = None,
        authtoken: str | None = None,
        env: Mapping[str, str] | None = None,
        validate_deployments: bool = True,
        update_state_on_reject: bool = False,
        timeout_s: float = 10.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._on_config = on_config
        self._base = work_base(base, os.environ if env is None else env)
        self._env = env
        # one ConfigIpc per connection, all with the same socket, token and deadline
        self._ipc_options: dict[str, Any] = {"ipc_socket": ipc_socket, "authtoken": authtoken,
                                             "timeout_s": timeout_s}
        self._validate_deployments = validate_deployments
        self._update_state_on_reject = update_state_on_reject
        self._reconnect_max_s = reconnect_max_s
        self._config: Config | None = None
        self._ipc: ConfigIpc | None = None
        self._dirty = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._validations: set[asyncio.Task[None]] = set()
        self._once = Once()
        self._counts = {"applied": 0, "rejected": 0, "validated": 0, "invalidated": 0,
                        "reconnects": 0}
        self._last_reject: str | None = None
        self._last_reject_at: float | None = None
        self._validation_supported = True
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public

    @property
    def config(self) -> Config:
        if self._config is None:
            raise RuntimeError("GreengrassConfigWatcher is not entered")
        return self._config

    def health(self) -> dict[str, Any]:
        """Counters and the last rejection, for the daemon's health report."""
        return {
            "connected": self._ipc is not None and not self._lost.is_set(),
            "updates_applied": self._counts["applied"],
            "updates_rejected": self._counts["rejected"],
            "deployments_accepted": self._counts["validated"],
            "deployments_rejected": self._counts["invalidated"],
            "reconnects": self._counts["reconnects"],
            "last_rejected_reason": self._last_reject,
            "last_rejected_at": self._last_reject_at,
            "validation_supported": self._validation_supported,
            "last_error": self._last_error,
        }

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("GreengrassConfigWatcher is already entered")
        await self._connect()
        try:
            value = await self._get_configuration()
            # invalid at start: ConfigError propagates (clear error, non-zero exit)
            self._config = config_from_component(value, base=self._base, env=self._env)
        except BaseException:
            self._close_ipc()
            raise
        self._task = asyncio.create_task(self._run(), name="ggconfig-watch")
        log.info("ggconfig_loaded", thing=self._config.thing)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        tasks = [*([task] if task else []), *self._validations]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._validations.clear()
        self._close_ipc()

    # ------------------------------------------------------------------ the connection

    async def _connect(self) -> None:
        self._lost.clear()
        ipc = ConfigIpc(
            on_update=self._dirty.set,
            on_lost=lambda: self._ipc_lost(ipc),
            on_validate=self._spawn_validation if self._validate_deployments else None,
            **self._ipc_options,
        )
        self._ipc = ipc
        try:
            await ipc.open()
        except BaseException:
            self._ipc = None
            raise
        self._validation_supported = ipc.validation_supported

    def _ipc_lost(self, ipc: ConfigIpc) -> None:
        if ipc is self._ipc:  # not a late callback of a connection already replaced
            self._lost.set()

    def _close_ipc(self) -> None:
        ipc, self._ipc = self._ipc, None
        if ipc is not None:
            ipc.close()

    async def _get_configuration(self) -> dict[str, Any]:
        if self._ipc is None:
            raise UplinkError("ggconfig: not connected")
        return await self._ipc.get_configuration()

    async def _reconnect(self) -> None:
        self._close_ipc()
        backoff = Backoff(base_s=0.5, cap_s=self._reconnect_max_s)
        while True:
            try:
                await self._connect()
            except EdgeError as exc:
                self._last_error = str(exc)
                if isinstance(exc, UplinkAuthError):  # a refused token: retrying soon won't help
                    backoff.to_cap()
                delay = backoff.next()
                self._once(log, "reconnect", "ggconfig_reconnect_failed", reason=str(exc),
                           retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            self._counts["reconnects"] += 1
            self._last_error = None
            self._once.clear("reconnect")
            log.info("ggconfig_reconnected")
            return

    # ------------------------------------------------------------------ behaviour

    async def _run(self) -> None:
        while True:
            dirty = asyncio.ensure_future(self._dirty.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait({dirty, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                dirty.cancel()
                lost.cancel()
            if self._lost.is_set():
                await self._reconnect()
                self._dirty.set()  # we may have missed updates meanwhile
                continue
            self._dirty.clear()
            try:
                value = await self._get_configuration()
            except UplinkError as exc:
                self._last_error = str(exc)
                log.warning("ggconfig_read_failed", reason=str(exc))
                self._lost.set()
                continue
            await self._apply(value)

    async def _apply(self, value: Mapping[str, Any]) -> None:
        try:
            new = config_from_component(value, base=self._base, env=self._env)
        except ConfigError as exc:
            await self._reject(str(exc))
            return
        if new == self._config:
            return
        try:
            res = self._on_config(new)
            if inspect.isawaitable(res):
                await res
        except ConfigError as exc:
            await self._reject(str(exc))
            return
        except Exception as exc:
            await self._reject(f"applying failed: {type(exc).__name__}: {exc}")
            return
        self._config = new
        self._counts["applied"] += 1
        log.info("ggconfig_applied")

    async def _reject(self, reason: str) -> None:
        self._counts["rejected"] += 1
        self._last_reject = reason
        self._last_reject_at = time.time()
        # WARNING once per distinct reason, DEBUG when the same one comes again
        self._once(log, f"rejected:{reason}", "ggconfig_rejected", reason=reason,
                   kept="previous configuration")
        if self._update_state_on_reject and self._ipc is not None:
            try:
                await self._ipc.report_errored()
            except UplinkError as exc:
                log.debug("ggconfig_update_state_failed", reason=str(exc))

    def _spawn_validation(self, value: dict[str, Any], deployment_id: str | None) -> None:
        if len(self._validations) >= 8:  # the nucleus deploys one at a time; never pile up
            log.warning("ggconfig_validation_dropped", deployment=deployment_id)
            return
        task = asyncio.create_task(self._validate(value, deployment_id),
                                   name="ggconfig-validate")
        self._validations.add(task)
        task.add_done_callback(self._validations.discard)

    async def _validate(self, value: dict[str, Any], deployment_id: str | None) -> None:
        ipc = self._ipc
        if ipc is None:  # reconnecting: the nucleus times the validation out and goes on
            return
        try:
            config_from_component(value, base=self._base, env=self._env)
        except ConfigError as exc:
            accepted, message = False, str(exc)
            self._counts["invalidated"] += 1
            self._last_reject = f"deployment {deployment_id}: {exc}"
            self._last_reject_at = time.time()
            log.warning("ggconfig_deployment_rejected", deployment=deployment_id,
                        reason=str(exc))
        else:
            accepted, message = True, "valid"
            self._counts["validated"] += 1
        try:
            await ipc.report_validity(deployment_id, accepted=accepted, message=message)
        except UplinkError as exc:
            self._last_error = str(exc)
            log.warning("ggconfig_report_failed", deployment=deployment_id, reason=str(exc))
