"""What the httpx integration adds per request, against the bare httpx client, in the same run.

Run: .venv/bin/python benchmarks/bench_client_integrations.py [--output results.md]

Two measurements, each the median over interleaved repeats (see _harness.py):
- loopback: GET from an upstream under uvicorn in a separate process on
  127.0.0.1 (its own core), bare ``httpx.Client`` vs ``MeshTransport``;
- in-process: the same through ``httpx.MockTransport``, i.e. no network, to
  show the integration's absolute cost per request.
meshmetrics is configured with an in-memory reader so that every measurement is really recorded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import free_port, machine, measure, wait_for_port
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import meshmetrics
from meshmetrics.integrations.httpx import MeshTransport

SERVER = """
import sys, uvicorn

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), lifespan="off", log_level="warning", access_log=False)
"""


def loopback(calls: int, repeats: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/users/1"
        bare = httpx.Client()
        meshed = httpx.Client(transport=MeshTransport(service="users"))
        with bare, meshed:
            return measure(
                {"bare httpx": lambda: bare.get(url), "MeshTransport": lambda: meshed.get(url)},
                calls=calls,
                repeats=repeats,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


def in_process(calls: int, repeats: int) -> dict[str, float]:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")

    url = "http://users-1:8080/users/1"
    bare = httpx.Client(transport=httpx.MockTransport(handler))
    meshed = httpx.Client(transport=MeshTransport(httpx.MockTransport(handler), service="users"))
    with bare, meshed:
        return measure(
            {"bare httpx": lambda: bare.get(url), "MeshTransport": lambda: meshed.get(url)},
            calls=calls,
            repeats=repeats,
        )


def table(title: str, results: dict[str, float]) -> str:
    base = results["bare httpx"]
    rows = [f"### {title}", "", "| client | µs/request | ratio | added µs |", "|---|---:|---:|---:|"]
    for name, ns in results.items():
        rows.append(f"| {name} | {ns / 1000:.1f} | {ns / base:.3f} | {(ns - base) / 1000:+.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="requests per case per repeat (loopback)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--output", type=Path, default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    handle = meshmetrics.configure(readers=[InMemoryMetricReader()], prometheus=False, set_global=False)
    try:
        over_loopback = loopback(args.calls, args.repeats)
        no_network = in_process(args.calls * 5, args.repeats)
    finally:
        handle.shutdown()
    text = "\n\n".join(
        [
            "# httpx integration: added cost per request",
            machine(),
            table("Loopback upstream (uvicorn, separate process)", over_loopback),
            table("No network (httpx.MockTransport)", no_network),
        ]
    )
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
