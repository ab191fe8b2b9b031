"""A real Mosquitto for tests: mutual TLS, identity from the client cert's CN, and an
ACL that scopes each thing to ``vehicles/<thing>/#`` as an AWS IoT policy would."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OBSERVER = "observer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def issue(self, cn: str, *, server: bool = False) -> None:
        if self.cert(cn).exists():
            return
        d = self.dir
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}", cwd=d)
        ext = d / f"{cn}.ext"
        if server:
            ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                           "extendedKeyUsage=serverAuth\n")
        else:
            ext.write_text("extendedKeyUsage=clientAuth\n")
        _openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext.name,
                 "-out", f"{cn}.pem", cwd=d)
        # mosquitto drops to its own user before reading its key; our own client keys
        # stay private (the daemon refuses world-readable keys).
        os.chmod(self.key(cn), 0o644 if server else 0o600)

    @classmethod
    def create(cls, things: list[str]) -> Pki:
        d = Path(tempfile.mkdtemp(prefix="ve-pki-"))
        os.chmod(d, 0o755)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
                 "-subj", "/CN=vehicle-edge test CA", cwd=d)
        os.chmod(d / "ca.pem", 0o644)
        pki = cls(d)
        pki.issue("localhost", server=True)
        for t in [*things, OBSERVER]:
            pki.issue(t)
        return pki


@dataclass
class Broker:
    pki: Pki
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.pki.dir / f"mosquitto-{self.port}.conf"

    def write_conf(self) -> None:
        """The ACL and the broker's configuration (persistence off)."""
        acl = self.pki.dir / "acl"
        acl.write_text(
            "pattern readwrite vehicles/%u/#\n\n"
            f"user {OBSERVER}\ntopic read vehicles/#\n"
        )
        os.chmod(acl, 0o644)
        self.conf.write_text(
            "per_listener_settings false\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.pki.ca}\n"
            f"certfile {self.pki.cert('localhost')}\n"
            f"keyfile {self.pki.key('localhost')}\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
            f"acl_file {acl}\n"
        )
        os.chmod(self.conf, 0o644)

    def start(self) -> None:
        self.write_conf()
        self.proc = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def uplink_section(self, thing: str) -> str:
        return (
            "[uplink]\n"
            'kind = "mqtt"\n'
            'endpoint = "localhost"\n'
            f"port = {self.port}\n"
            f'ca = "{self.pki.ca}"\n'
            f'cert = "{self.pki.cert(thing)}"\n'
            f'key = "{self.pki.key(thing)}"\n'
            "connect_timeout_s = 5.0\n"
            "backoff_max_s = 2.0\n"
        )


def observer_client(broker: Broker, *, client_id: str, on_message: Callable[..., None],
                    topic: str = "vehicles/#", session_s: int = 0) -> Any:
    """A paho MQTT 5 client of the observer identity, connected and subscribed (QoS 1) to
    ``topic``; ``session_s`` > 0 keeps a persistent session that long across broker
    restarts (and reconnects quickly)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
    ctx.load_cert_chain(str(broker.pki.cert(OBSERVER)), str(broker.pki.key(OBSERVER)))
    c.tls_set_context(ctx)
    subscribed = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = on_message
    if session_s:
        c.reconnect_delay_set(0.1, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_s
        c.connect("localhost", broker.port, clean_start=False, properties=props)
    else:
        c.connect("localhost", broker.port)
    c.loop_start()
    if not subscribed.wait(10):
        c.loop_stop()
        raise RuntimeError(f"observer {client_id} could not subscribe to {topic}")
    return c


class Subscriber:
    """Collects everything under ``vehicles/#`` as the observer identity."""

    def __init__(self, broker: Broker, topic: str = "vehicles/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = observer_client(broker, client_id=f"observer-{time.time_ns()}",
                                      on_message=self._on_message, topic=topic)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[str, bytes]]], bool],
                 timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PersistentBroker(Broker):
    """A broker that keeps sessions and queued messages across restarts.

    Its configuration is written before the one and only mosquitto process starts: a
    throw-away broker without persistence must never listen on this port, even briefly,
    or the daemon may reconnect to it, get PUBACKs and see those messages vanish with
    it before the observer has reconnected. Started as root, mosquitto runs as its own
    user: the persistence folder is that user's, or mosquitto cannot save (it says
    "Permission denied" and forgets every session at the restart). ``stop`` checks that
    the database was written."""

    @property
    def store(self) -> Path:
        return self.pki.dir / f"mq-store-{self.port}"

    def write_conf(self) -> None:
        super().write_conf()
        self.store.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam("mosquitto")
                os.chown(self.store, pw.pw_uid, pw.pw_gid)
        text = self.conf.read_text()
        assert "persistence false\n" in text
        self.conf.write_text(text.replace(
            "persistence false\n",
            f"persistence true\npersistence_location {self.store}/\n"
            "persistence_file ps.db\n"))

    def stop(self, timeout: float = 30.0, *, require_saved: bool = True) -> None:
        """``require_saved=False``: a broker no client has used yet (nothing to keep)."""
        proc = self.proc
        running = proc is not None and proc.poll() is None
        # a graceful stop saves the database: on a loaded machine that can outlast the
        # plain broker's 5 s, and a kill would lose what the test is about
        super().stop(timeout)
        if running and require_saved and not (self.store / "ps.db").exists():
            # a broker that did not persist would lose the observer's session
            err = proc.stderr.read().decode(errors="replace") if proc and proc.stderr else ""
            raise AssertionError(f"mosquitto saved nothing in {self.store} (exit "
                                 f"{proc.returncode if proc else None}): {err[-2000:]}")


class Observer:
    """Every envelope the broker accepted, across broker restarts (persistent session)."""

    def __init__(self, broker: Broker) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = observer_client(broker, client_id=f"obs-{broker.port}",
                                      on_message=self._on_message, session_s=3600)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            self.envelopes.extend(body["records"] if "records" in body else [body])

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.envelopes)

    def ids(self) -> list[str]:
        with self._lock:
            return [str(e["id"]) for e in self.envelopes]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PropsSubscriber:
    """MQTT 5 observer that keeps each message's user properties."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.got = threading.Event()
        self.client = observer_client(broker, client_id=f"props-{time.time_ns()}",
                                      on_message=self._on_message)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        props = dict(getattr(msg.properties, "UserProperty", []) or [])
        self.messages.append((msg.topic, bytes(msg.payload), props))
        self.got.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
