"""Recording cost while the OTLP collector is down vs. while it is up (same process, same run).

Run: .venv/bin/python benchmarks/bench_outage.py  (needs rotel: pip install rotel)
Writes benchmarks/results/outage.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import free_port, machine, measure

import meshmetrics
from meshmetrics import LoadBalancerMetrics

RESULTS = Path(__file__).resolve().parent / "results"


def start_rotel(port: int, workdir: str) -> subprocess.Popen[bytes]:
    import rotel

    binary = Path(rotel.__file__).parent / "rotel-agent"
    process = subprocess.Popen(
        [
            str(binary),
            "start",
            "--exporter",
            "blackhole",
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{port}",
            "--otlp-http-endpoint",
            f"127.0.0.1:{free_port()}",
            "--pid-file",
            f"{workdir}/rotel.pid",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return process


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        rotel = start_rotel(port, workdir)
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=f"http://127.0.0.1:{port}",
            export_interval=0.2,
            export_timeout=1,
            set_global=False,
            environ={"OTEL_EXPORTER_OTLP_TIMEOUT": "500"},
        )
        lb = LoadBalancerMetrics()
        case = {"record_request": lambda: lb.record_request("api", "api-1", "round_robin")}
        up = measure(case, calls=20_000)["record_request"]
        rotel.terminate()
        rotel.wait()
        time.sleep(0.5)  # exports now fail and retry in the background
        down = measure(case, calls=20_000)["record_request"]
        handle.shutdown(timeout=2)
    RESULTS.mkdir(exist_ok=True)
    table = (
        f"# Recording during a collector outage\n\n{machine()}\n\n"
        "| collector | record_request ns/op | ratio |\n|---|---:|---:|\n"
        f"| up | {up:.0f} | 1.00 |\n| down (exports failing every 0.2 s) | {down:.0f} | {down / up:.2f} |\n"
    )
    (RESULTS / "outage.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
