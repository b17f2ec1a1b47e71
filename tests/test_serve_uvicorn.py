"""`poolattn serve` as users run it: a real uvicorn process on 127.0.0.1, the synchronous openai client, clients that
disconnect mid-request, and SIGTERM while a request is in flight."""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from helpers import KEY, TEXTS, free_port, wait_for_health


class Server:
    def __init__(self, folder: str, log_path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "poolattn.cli", "serve", folder, "--port", str(self.port),
               "--served-model-name", "tiny", "--api-key", KEY, "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            wait_for_health(self.proc, self.port, self.log)
        except AssertionError as err:
            self.stop()
            pytest.fail(str(err))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def server(served_folder, tmp_path_factory):
    srv = Server(served_folder, tmp_path_factory.mktemp("log") / "serve.log")
    yield srv
    srv.stop()


def test_openai_client_against_uvicorn(server, served_model):
    ref = served_model.encode(TEXTS)
    with server.client() as client:
        for fmt in (None, "base64", "float"):  # None: the client asks for base64 and decodes it itself
            resp = client.embeddings.create(model="tiny", input=TEXTS, **({"encoding_format": fmt} if fmt else {}))
            got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64" else d.embedding
                            for d in resp.data], dtype=np.float32)
            assert np.abs(got - ref).max() < 1e-5, fmt
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.embeddings.create(model="gpt-4", input="hi")
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            bad.embeddings.create(model="tiny", input="hi")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'poolattn_requests_total{route="/v1/embeddings",status="200"} 3.0' in metrics


def test_clients_that_disconnect_mid_request_do_not_stop_the_server(server, served_model):
    body = ('{"model": "tiny", "input": [' + ", ".join(f'"text number {i} of a long request"' for i in range(500))
            + "]}").encode()
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    for payload in (head + body[:100], head + body):  # gone while sending the body; gone while it is encoded
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(payload)
    time.sleep(0.5)
    assert server.proc.poll() is None, server.log()
    with server.client() as client:
        resp = client.embeddings.create(model="tiny", input=TEXTS[:2], encoding_format="float")
    assert np.abs(np.array([d.embedding for d in resp.data]) - served_model.encode(TEXTS[:2])).max() < 1e-5
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_sigterm_lets_requests_in_flight_finish(served_folder, served_model, tmp_path):
    srv = Server(served_folder, tmp_path / "serve.log", "--batch-wait-ms", "2000")  # the request waits in the queue
    try:
        result = {}

        def call():
            with srv.client() as client:
                result["resp"] = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while "poolattn_queue_depth 4.0" not in httpx.get(f"{srv.url}/metrics").text:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        caller.join(30)
        # uvicorn re-raises the signal once it has shut down cleanly, so the process ends by SIGTERM
        assert srv.proc.wait(30) in (0, -signal.SIGTERM), srv.log()
        assert "resp" in result, srv.log()
        got = np.array([d.embedding for d in result["resp"].data])
        assert np.abs(got - served_model.encode(TEXTS)).max() < 1e-5
        with pytest.raises(httpx.TransportError):  # and it is gone
            httpx.get(f"{srv.url}/health", timeout=2)
    finally:
        srv.stop()
