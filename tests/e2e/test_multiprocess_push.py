"""multiprocess_push="merged": one process pushes every worker's counts to a real OTLP receiver, as one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from tests.e2e.servers import rotel_receiver

pytestmark = pytest.mark.e2e


def test_the_leading_process_pushes_the_merged_view(tmp_path):
    with rotel_receiver() as rotel:
        options = {
            "multiprocess_dir": str(tmp_path),
            "multiprocess_push": "merged",
            "otlp_endpoint": rotel.grpc_endpoint,
            "export_interval": 3600,
            "prometheus": False,
            "set_global": False,
            "environ": {},
        }
        handle = meshmetrics.configure(**options)  # this process takes the lead (the first to push)
        try:
            for _ in range(5):
                LoadBalancerMetrics().record_request("api", "a", "round_robin")
            child = textwrap.dedent(
                f"""
                import meshmetrics
                handle = meshmetrics.configure(**{options!r})
                for _ in range(7):
                    meshmetrics.LoadBalancerMetrics().record_request("api", "a", "round_robin")
                assert handle.force_flush(timeout=10) is False  # not the leader: it pushes nothing
                """
            )
            assert handle.force_flush(timeout=10) is True  # takes the lead
            subprocess.run([sys.executable, "-c", child], check=True, timeout=60)  # publishes at exit
            assert handle.force_flush(timeout=10) is True
            point = rotel.wait_for(
                "mesh.lb.requests",
                value=12,
                **{"mesh.service": "api", "mesh.instance": "a", "mesh.lb.strategy": "round_robin"},
            )
            assert point["value"] == 12  # 5 here + 7 from the exited process: one series, merged
        finally:
            handle.shutdown()
