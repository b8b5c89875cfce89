import socket

import pytest


def test_a_connection_to_the_outside_fails_the_test() -> None:
    with socket.socket() as sock, pytest.raises(AssertionError, match="reach the network"):
        sock.connect(("192.0.2.1", 443))


def test_loopback_is_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())
