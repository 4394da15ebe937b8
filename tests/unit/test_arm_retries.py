"""module_utils/arm.py's retry policy against a real socket that resets connections (azure-core's RequestsTransport,
no mock of the pipeline): a PATCH whose connection is reset is sent again, as GET and PUT are; a POST is not."""
from __future__ import annotations

import socket
import struct
import threading

import pytest
from azure.core import PipelineClient
from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.policies import RetryPolicy
from azure.core.rest import HttpRequest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import READ_ONLY_POST, RETRY_METHODS, retry_policy


class ResettingServer:
    """HTTP on 127.0.0.1 that reads each request and drops the first ``resets`` connections with a TCP RST (no
    answer), then answers ``200 {}``. ``requests`` lists the methods it read."""

    def __init__(self, resets: int):
        self.resets, self.requests = resets, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            with conn:
                while True:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _sep, body = data.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append(head.split(b" ", 1)[0].decode())
                    if len(self.requests) <= self.resets:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        break
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    def close(self):
        self.sock.close()


@pytest.fixture
def server():
    running = ResettingServer(resets=1)
    yield running
    running.close()


def send(server, policy, method, **options):
    client = PipelineClient(server.url, policies=[policy])
    request = HttpRequest(method, server.url + "/subscriptions/s/resourceGroups/rg/providers/X/y/z",
                          json={"properties": {"disableLocalAuth": True}})
    return client.send_request(request, **options)


@pytest.mark.parametrize("method", ["PATCH", "PUT", "GET"])
def test_a_reset_connection_is_retried(server, method):
    answer = send(server, retry_policy(), method)
    assert answer.status_code == 200
    assert server.requests == [method, method]


def test_azure_cores_own_policy_does_not_retry_a_reset_patch(server):
    """Why the collection has its own policy: without it the module failed on the first reset."""
    with pytest.raises(ServiceResponseError):
        send(server, RetryPolicy(), "PATCH")
    assert server.requests == ["PATCH"]


def test_a_reset_post_is_not_sent_again(server):
    """POST actions are not all idempotent (regenerateKey): azure-core's rule stays."""
    assert "POST" not in RETRY_METHODS
    with pytest.raises(ServiceResponseError):
        send(server, retry_policy(), "POST")
    assert server.requests == ["POST"]


def test_a_reset_post_that_only_reads_is_sent_again(server):
    """listKeys, listClusterUserCredential and config/appsettings/list pass READ_ONLY_POST."""
    assert send(server, retry_policy(), "POST", **READ_ONLY_POST).status_code == 200
    assert server.requests == ["POST", "POST"]
