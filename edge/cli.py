"""``edge``: argument parsing and subcommands only. The work lives elsewhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge import __version__
from edge.config import Config
from edge.daemon.start import configure_logging as _logging
from edge.daemon.start import load_config_or_exit as _load
from edge.daemon.start import run as run_daemon_command
from edge.errors import ConfigError, ExitCode, describe, exit_code, guarded


def cmd_run(args: argparse.Namespace) -> int:
    return run_daemon_command(None if args.greengrass else args.config)


def cmd_sim(args: argparse.Namespace) -> int:
    usage = None
    if args.can_channel is not None and args.can == "slcan":
        usage = ("--can-channel names a virtual or socketcan bus; the slcan adapter's "
                 "channel is its pty")
    elif not args.max and not args.rate > 0:
        usage = f"--rate must be > 0 (got {args.rate})"
    elif args.max_gap is not None and not args.max_gap >= 0:
        usage = f"--max-gap must be >= 0 seconds (got {args.max_gap})"
    elif args.serve is None and args.config is None:
        usage = "--config is required (without --serve)"
    elif args.serve is not None and (args.config is not None or args.can != "auto"
                                     or args.can_channel is not None):
        usage = "--serve runs no daemon: no --config, --can or --can-channel"
    if usage is not None:
        print(f"edge sim: {usage}", file=sys.stderr)
        return ExitCode.USAGE
    if args.serve is not None:
        _logging(None)
        from sim.drive import DriveError
        from sim.serve import run_serve

        try:
            return run_serve(args.drive, args.serve, rate=None if args.max else args.rate,
                             loop=args.loop, max_gap_s=args.max_gap)
        except (DriveError, OSError) as exc:
            print(f"edge sim: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    cfg = _load(args.config)
    _logging(cfg)
    from edge.daemon.loop import run_loop
    from sim.run import run_sim

    rate = None if args.max else args.rate
    return run_loop(run_sim(args.drive, cfg, rate=rate, loop=args.loop, can_mode=args.can,
                        can_channel=args.can_channel, max_gap_s=args.max_gap))


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    _logging(cfg, quiet=True)
    from edge.commands.replay import main

    return main(args.drive, cfg, out=args.out)


def cmd_decode_nmea(args: argparse.Namespace) -> int:
    _logging(None, quiet=True)
    from edge.commands.decode_nmea import main

    return main(args.file, date=args.date, out=sys.stdout, reference_date=args.reference_date,
                rollover=not args.no_rollover)


def cmd_decode_can(args: argparse.Namespace) -> int:
    _logging(None, quiet=True)
    from edge.commands.decode_can import main

    return main(args.file, dbc=args.dbc, signal=args.signal, out=sys.stdout)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    from edge.config_files import check_runtime

    try:
        check_runtime(cfg)  # the files it names: zones, DBC and signals, TLS material
    except ConfigError as exc:
        print(describe(exc, config=f"config {args.file}"), file=sys.stderr)
        return exit_code(exc)
    print(f"{args.file}: ok (thing {cfg.thing}, uplink {cfg.uplink.kind})")
    return ExitCode.OK


def cmd_outbox(args: argparse.Namespace) -> int:
    from edge.commands.outbox import keygen, main

    if args.action == "keygen":
        if args.out is None:
            print("edge outbox keygen: --out FILE is required", file=sys.stderr)
            return ExitCode.USAGE
        return keygen(args.out)
    if args.config is None:
        print(f"edge outbox {args.action}: --config is required", file=sys.stderr)
        return ExitCode.USAGE
    cfg = _load(args.config)

    return main(cfg, args.action, out=sys.stdout, lanes=args.lane, yes=args.yes)


def cmd_status(args: argparse.Namespace) -> int:
    from edge.commands.status import main

    if args.file is not None:
        return main(None, out=sys.stdout, path=args.file)
    return main(_load(args.config), out=sys.stdout)


def cmd_report(args: argparse.Namespace) -> int:
    _logging(None, quiet=True)
    from edge.commands.report import main

    return main(args.drive, config=args.config, out=args.out)


def cmd_record(args: argparse.Namespace) -> int:
    _logging(None)
    from edge.commands.record import main

    return main(args.out, serial=args.serial, baud=args.baud, can_interface=args.can_interface,
                can_channel=args.can_channel, duration_s=args.duration)


def cmd_roads(args: argparse.Namespace) -> int:
    from edge.commands import roads

    if args.what == "import":
        return roads.import_main(args.extract, args.out, bbox=args.bbox, country=args.country,
                                 stdout=sys.stdout)
    if args.what == "info":
        return roads.info_main(args.index, stdout=sys.stdout)
    return roads.match_main(args.index, args.lat, args.lon, heading=args.heading,
                            speed_kmh=args.speed, hdop=args.hdop, stdout=sys.stdout)


def config_keys_help() -> str:
    """Every config key, section by section: what a Greengrass deployment may merge."""
    import dataclasses

    lines = ["As a Greengrass component (--greengrass) the configuration is these TOML keys",
             "as component configuration JSON; a deployment merge may set any of them",
             "(an absent or null key keeps the default):", ""]

    def walk(cls: type, prefix: str) -> None:
        scalars = []
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
            else:
                scalars.append(f.name)
        if scalars:
            lines.append(f"  {prefix.rstrip('.') or '(top)'}: {', '.join(scalars)}")

    walk(Config, "")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge",
        description="vehicle-edge: CAN + GNSS rules at the edge, store-and-forward to MQTT.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", help="run the daemon", description="Run the daemon until SIGTERM.",
                       epilog=config_keys_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", "-c", type=Path, help="TOML config file")
    g.add_argument("--greengrass", action="store_true",
                   help="as a Greengrass component: configuration from the nucleus over IPC, "
                   "hot-reloaded on updates")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("sim", help="run the daemon fed by a replayed drive through ptys",
                       description="Replay DRIVE into a pty (NMEA) and a CAN bus (by default "
                       "a fake USB slcan adapter on a pty) and run the unmodified daemon on "
                       "them, as on a laptop. Only the config's gnss.port and can "
                       "interface/channel are rewritten.")
    s.add_argument("drive", type=Path, help="drive directory (gnss.nmea, can.log, drive.toml)"
                   "; with --serve also a bundled drive's name (city, faults)")
    s.add_argument("--config", "-c", type=Path, help="the daemon's config (not with --serve)")
    s.add_argument("--serve", type=Path, metavar="DIR",
                   help="run no daemon: serve the drive at stable paths for one running "
                   "elsewhere (DIR/gnss pty, DIR/can slcan adapter, the DBC, and "
                   "DIR/bench.json: the daemon config merge pointing at them)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, default=1.0,
                   help="time warp factor (default 1x; 10 = ten times faster)")
    g.add_argument("--max", action="store_true",
                   help="as fast as the daemon reads (back-pressure, no timing)")
    s.add_argument("--max-gap", type=float, metavar="S",
                   help="shorten idle gaps of the drive longer than S seconds to S "
                   "(GNSS dropouts, adapter unplugs; timestamps are unchanged)")
    s.add_argument("--can", choices=["auto", "slcan", "virtual", "socketcan"], default="auto",
                   help="CAN path: slcan = fake USB adapter on a pty; virtual = python-can's "
                   "in-process bus; socketcan = an existing vcan interface (Linux: sudo ip "
                   "link add vcan0 type vcan && sudo ip link set up vcan0); auto = slcan, "
                   "or virtual when --can-channel is given (default auto)")
    s.add_argument("--can-channel", metavar="NAME",
                   help="bus name for --can socketcan (default vcan0) or virtual (default "
                   "a fresh name); not with slcan")
    s.add_argument("--loop", action="store_true", help="start over at the end")
    s.set_defaults(func=cmd_sim)

    s = sub.add_parser("replay", help="deterministic replay of a drive to a JSON-lines file",
                       description="Every message the daemon would publish for DRIVE, one JSON "
                       'object per line {"topic": ..., "payload": {...}}, in publish order. '
                       "No broker; as fast as the machine allows.")
    s.add_argument("drive", type=Path)
    s.add_argument("--config", "-c", type=Path, required=True)
    s.add_argument("--out", "-o", type=Path, required=True, help="output .jsonl ('-' = stdout)")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("decode", help="decode NMEA or CAN logs to JSON lines")
    dsub = s.add_subparsers(dest="what", required=True, metavar="nmea|can")
    d = dsub.add_parser("nmea", help="one JSON line per merged fix")
    d.add_argument("file", type=Path)
    d.add_argument("--date", help="YYYY-MM-DD for GGA-only logs")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--reference-date", metavar="YYYY-MM-DD",
                   help="the second clock for GPS week-rollover correction (default: the "
                   "drive.toml date or the CAN log clock of the drive the file sits in; "
                   "none: dates kept as the receiver sent them)")
    g.add_argument("--no-rollover", action="store_true",
                   help="never correct a GPS week rollover: dates exactly as sent")
    d.set_defaults(func=cmd_decode_nmea)
    d = dsub.add_parser("can", help="one JSON line per decoded speed sample")
    d.add_argument("file", type=Path, help="any python-can log format (candump -L, asc, blf, ...)")
    d.add_argument("--dbc", type=Path, required=True)
    d.add_argument("--signal", required=True, help="MESSAGE.SIGNAL")
    d.set_defaults(func=cmd_decode_can)

    s = sub.add_parser("check-config", help="validate a config file (exit 2 when invalid)")
    s.add_argument("file", type=Path)
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("outbox", help="inspect or manage the durable outbox")
    s.add_argument("action", choices=["stats", "export", "purge", "keygen"])
    s.add_argument("--config", "-c", type=Path, help="the daemon's config (not for keygen)")
    s.add_argument("--out", "-o", type=Path, help="keygen: the new key file (0600, never"
                   " overwritten)")
    s.add_argument("--lane", action="append", choices=["alert", "trip", "telemetry", "health"],
                   help="restrict export/purge to these lanes (repeatable)")
    s.add_argument("--yes", action="store_true", help="purge without asking")
    s.set_defaults(func=cmd_outbox)

    s = sub.add_parser("status", help="health of a running daemon (exit 1 if not running)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", "-c", type=Path)
    g.add_argument("--file", "-f", type=Path, help="the status file itself (a Greengrass "
                   "component writes it to its work dir: health.json)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("report", help="draw a drive: track, zones, events, speed (PNG)")
    s.add_argument("drive", type=Path)
    s.add_argument("--config", "-c", type=Path, required=True)
    s.add_argument("--out", "-o", type=Path, required=True)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("record", help="capture serial NMEA and CAN into a drive directory")
    s.add_argument("--out", "-o", type=Path, required=True)
    s.add_argument("--serial", help="serial port of the GNSS receiver")
    s.add_argument("--baud", type=int, default=9600)
    s.add_argument("--can-interface", choices=["socketcan", "slcan", "virtual"])
    s.add_argument("--can-channel")
    s.add_argument("--duration", type=float, help="seconds (default: until Ctrl-C)")
    s.set_defaults(func=cmd_record)

    s = sub.add_parser("roads", help="posted speed limits: build or query a road index")
    rsub = s.add_subparsers(dest="what", required=True, metavar="import|info|match")
    r = rsub.add_parser("import", help="OSM extract (.osm.pbf) -> road index (SQLite)")
    r.add_argument("extract", type=Path)
    r.add_argument("--out", "-o", type=Path, required=True)
    r.add_argument("--bbox", help="W,S,E,N in degrees: keep only roads in this box")
    r.add_argument("--country", help="ISO code for implicit/default limits (default: guessed)")
    r = rsub.add_parser("info", help="what an index holds")
    r.add_argument("index", type=Path)
    r = rsub.add_parser("match", help="the road and limit one position matches")
    r.add_argument("index", type=Path)
    r.add_argument("lat", type=float)
    r.add_argument("lon", type=float)
    r.add_argument("--heading", type=float, help="course over ground, degrees")
    r.add_argument("--speed", type=float, help="km/h")
    r.add_argument("--hdop", type=float)
    s.set_defaults(func=cmd_roads)
    return p


# the commands that run a daemon: a process that lives for hours (``edge.process``)
DAEMON_COMMANDS = ("run", "sim")


def _daemon_args(args: argparse.Namespace) -> list[str] | None:
    """``edge run``'s arguments for ``python -m edge.daemon`` (``edge.daemon.start``)."""
    if args.command != "run":
        return None
    return ["--greengrass"] if args.greengrass else ["--config", str(args.config)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if args.command in DAEMON_COMMANDS:
            from edge.process import check_environment, restart_optimized

            check_environment()
            if argv is None:  # this process is the command (not a caller's function)
                restart_optimized(daemon_args=_daemon_args(args))
        return int(args.func(args))

    try:
        return guarded(command)
    except BrokenPipeError:
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
