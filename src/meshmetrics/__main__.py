"""Command line: ``python -m meshmetrics demo | top | generate``."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(prog="meshmetrics", description="meshmetrics tools")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a simulated service mesh emitting every metric")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument(
        "--port",
        type=int,
        default=None,
        help="Prometheus port (default: OTEL_EXPORTER_PROMETHEUS_PORT or 9464)",
    )
    demo.add_argument("--host", default=None, help="Prometheus bind address (default: localhost)")
    demo.add_argument("--rate", type=float, default=50.0, help="logical calls per second (default: 50)")
    demo.add_argument("--seed", type=int, default=None, help="random seed for a reproducible run")
    demo.add_argument("--cycle", type=float, default=60.0, help="seconds per fault cycle (default: 60)")
    top = commands.add_parser("top", help="golden signals of a process exposing meshmetrics")
    top.add_argument("url", nargs="?", default="http://localhost:9464/metrics", help="its /metrics URL")
    top.add_argument("--interval", type=float, default=0.5, help="seconds between scrapes (default: 0.5)")
    top.add_argument("--iterations", type=int, default=None, help="stop after this many views")
    top.add_argument("--no-clear", action="store_true", help="append views instead of redrawing the screen")
    top.add_argument("--service", default=None, help="show the instances of this one service instead")
    generate = commands.add_parser(
        "generate", help="a plugin registry's typed facades, metric reference, dashboard and rules"
    )
    generate.add_argument("registry", type=Path, help="the plugin's conventions YAML")
    generate.add_argument("--output", type=Path, help="the Python module to write (facades, names)")
    generate.add_argument("--reference", type=Path, help="the Markdown metric reference to write")
    generate.add_argument("--dashboard", type=Path, help="the Grafana dashboard (JSON) to write")
    generate.add_argument("--rules", type=Path, help="the Prometheus recording rules (YAML) to write")
    generate.add_argument("--check", action="store_true", help="write nothing; fail if an output is stale")
    args = parser.parse_args(argv)
    if args.command == "generate":
        from meshmetrics._cli import generate as _generate  # noqa: PLC0415 - keep `--help` fast

        return _generate.run(
            args.registry,
            output=args.output,
            reference=args.reference,
            dashboard=args.dashboard,
            rules=args.rules,
            check=args.check,
        )
    if args.command == "top":
        from meshmetrics._cli import top as _top  # noqa: PLC0415 - keep `--help` fast

        try:
            _top.run(
                args.url,
                args.interval,
                args.iterations,
                clear=not args.no_clear and sys.stdout.isatty(),
                service=args.service,
            )
        except KeyboardInterrupt:
            pass
        except OSError as error:
            print(f"meshmetrics top: cannot scrape {args.url}: {error}", file=sys.stderr)
            return 1
        return 0

    import meshmetrics  # noqa: PLC0415 - keep `--help` fast
    from meshmetrics._cli import demo as _demo  # noqa: PLC0415

    handle = meshmetrics.configure(
        service_name="meshmetrics-demo", prometheus_host=args.host, prometheus_port=args.port
    )
    stop = threading.Event()
    _demo.install_signal_handlers(stop)
    where = handle.prometheus_url or f"nowhere: port {args.port} is in use (see the log)"
    print(f"meshmetrics demo: metrics on {where}", flush=True)
    if handle.otlp_endpoint:
        print(f"meshmetrics demo: pushing OTLP to {handle.settings.otlp_endpoint_redacted}", flush=True)
    try:
        _demo.run(
            duration=args.duration,
            rate=args.rate,
            seed=args.seed,
            out=sys.stdout,
            stop=stop,
            cycle_s=args.cycle,
        )
    finally:
        clean = handle.shutdown()
        print(
            f"meshmetrics demo: stopped ({'flushed' if clean else 'last export not confirmed'})", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
