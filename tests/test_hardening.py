"""Hardening: replays, malformed wire data and requests, private session files,
a broken interpreter, signals, crashes and bounded memory (issue 19).

Real jupyter_client sessions and raw ZeroMQ sockets (pyzmq) against the real
binary; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys

import pytest
import zmq
from jupyter_client.session import Session

from conftest import (
    PYTHON,
    KernelProcess,
    endpoint,
    execute,
    get_reply,
    iopub_until_idle,
    request,
    send_request,
    stepkernel_bin,
    wait_for,
    write_project,
)

DELIMITER = b"<IDS|MSG>"


def dealer(context, kp, channel="shell"):
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint(kp.info, channel))
    return sock


def session_for(kp) -> Session:
    return Session(key=kp.key, username="hardening")


def replies_to(sock, session: Session, msg_id: str, wait_ms: int) -> list[dict]:
    """Every reply to msg_id that arrives on `sock` within wait_ms after the last one."""
    found = []
    while sock.poll(wait_ms):
        _, parts = session.feed_identities(sock.recv_multipart())
        msg = session.deserialize(parts)
        if msg["parent_header"].get("msg_id") == msg_id:
            found.append(msg)
    return found


def round_trip(sock, session: Session, msg_type="kernel_info_request", content=None) -> dict:
    """Send a fresh request; return its reply (the kernel is alive and serving)."""
    msg = session.msg(msg_type, content or {})
    session.send(sock, msg)
    while True:
        assert sock.poll(30_000), f"no reply to {msg_type}"
        _, parts = session.feed_identities(sock.recv_multipart())
        reply = session.deserialize(parts)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply


# ------------------------------------------------------------ 1, 12: replays


def test_a_replayed_execute_request_runs_once(kernel, zmq_context, tmp_path):
    marker = tmp_path / "runs.txt"
    session = session_for(kernel)
    sock = dealer(zmq_context, kernel)
    msg = session.msg("execute_request", {"code": f"open({str(marker)!r}, 'a').write('x')", "silent": False})
    # Capture the exact signed frames once, then send them four times.
    frames = session.serialize(msg)
    for _ in range(4):
        sock.send_multipart(frames)
    # Proof the kernel handled everything queued before: a fresh request after them is answered.
    round_trip(sock, session)
    replies = replies_to(sock, session, msg["header"]["msg_id"], 200)
    sock.close()
    assert marker.read_text() == "x"
    assert len(replies) <= 1
    log = kernel.log()
    assert log.count("replayed message") == 3, log


def test_a_replay_on_another_channel_is_refused_too(kernel, zmq_context):
    session = session_for(kernel)
    shell = dealer(zmq_context, kernel, "shell")
    control = dealer(zmq_context, kernel, "control")
    msg = session.msg("kernel_info_request", {})
    frames = session.serialize(msg)
    shell.send_multipart(frames)
    assert replies_to(shell, session, msg["header"]["msg_id"], 5000)
    control.send_multipart(frames)
    round_trip(control, session)
    assert replies_to(control, session, msg["header"]["msg_id"], 100) == []
    assert "dropped a message on control: replayed message" in kernel.log()


def test_upper_case_signature_is_rejected(kernel, zmq_context, tmp_path):
    marker = tmp_path / "upper.txt"
    session = session_for(kernel)
    sock = dealer(zmq_context, kernel)
    msg = session.msg("execute_request", {"code": f"open({str(marker)!r}, 'a').write('u')"})
    frames = session.serialize(msg)
    i = frames.index(DELIMITER)
    frames[i + 1] = frames[i + 1].upper()
    sock.send_multipart(frames)
    round_trip(sock, session)
    assert not marker.exists()
    assert "bad or missing HMAC signature" in kernel.log()
