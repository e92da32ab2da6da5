"""A real Prometheus scrapes a TLS + client-certificate + bearer-token endpoint with the example job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from tests.e2e.servers import prometheus_server
from tests.tls import make_certificates

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prometheus-scrape-tls-bearer.yml"


def test_prometheus_scrapes_the_protected_endpoint_with_the_example_job(tmp_path):
    certificates = make_certificates(tmp_path)
    token = tmp_path / "token"
    token.write_text("scrape-s3cr3t\n")
    handle = meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_certfile=str(certificates.server_cert),
        prometheus_keyfile=str(certificates.server_key),
        prometheus_client_cafile=str(certificates.ca),
        prometheus_bearer_token_file=str(token),
        set_global=False,
        environ={},
    )
    try:
        for _ in range(4):
            LoadBalancerMetrics().record_request("api", "api-1", "round_robin")
        config = yaml.safe_load(EXAMPLE.read_text())
        job = config["scrape_configs"][0]
        job["authorization"]["credentials_file"] = str(token)
        job["tls_config"] = {
            "ca_file": str(certificates.ca),
            "cert_file": str(certificates.client_cert),
            "key_file": str(certificates.client_key),
        }
        job["static_configs"] = [{"targets": [f"127.0.0.1:{handle.prometheus_port}"]}]
        # a second job without credentials must fail to scrape
        config["scrape_configs"].append(
            {
                "job_name": "no-credentials",
                "scheme": "https",
                "tls_config": {"ca_file": str(certificates.ca)},
                "static_configs": [{"targets": [f"127.0.0.1:{handle.prometheus_port}"]}],
            }
        )
        config["global"] = {"scrape_interval": "1s"}
        with prometheus_server([], config_text=yaml.safe_dump(config)) as prometheus:
            result = prometheus.wait_for('mesh_lb_requests_total{job="my-service"}')
            assert float(result[0]["value"][1]) == 4.0
            assert prometheus.wait_for('up{job="my-service"} == 1')
            down = prometheus.wait_for('up{job="no-credentials"} == 0')
            assert down, "a scrape without client certificate and token must fail"
    finally:
        handle.shutdown()
