"""The kernel's sockets: transports, signatures, malformed frames, several clients, heartbeat."""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import queue

import pytest
import zmq
from jupyter_client.session import Session

from conftest import (
    KernelProcess,
    endpoint,
    execute,
    get_reply,
    iopub_until_idle,
    request,
    send_request,
    stream_text,
    wait_for,
)

DELIMITER = b"<IDS|MSG>"


def dealer(context, kp, channel="shell"):
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(endpoint(kp.info, channel))
    return socket


def recv_frames(socket, timeout=20.0):
    """The next multipart message on a DEALER, or fail after `timeout` seconds."""
    if not socket.poll(int(timeout * 1000)):
        raise AssertionError("no message from the kernel")
    return socket.recv_multipart()


def kernel_info_round_trip(socket, session, timeout=20.0):
    """Send kernel_info_request; return every message received up to its reply (the reply last)."""
    msg = session.msg("kernel_info_request", {})
    session.send(socket, msg)
    received = []
    while True:
        frames = recv_frames(socket, timeout)
        _, parts = session.feed_identities(frames)
        reply = session.deserialize(parts)
        received.append(reply)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["msg_type"] == "kernel_info_reply"
            return received


def signed(key: bytes, header: bytes, parent: bytes = b"{}", metadata: bytes = b"{}", content: bytes = b"{}"):
    """Frames after the delimiter, signed with `key` over exactly these bytes."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (header, parent, metadata, content):
        mac.update(part)
    return [DELIMITER, mac.hexdigest().encode(), header, parent, metadata, content]


def header(msg_type: str | None = "kernel_info_request") -> bytes:
    h = Session().msg_header(msg_type or "x")
    if msg_type is None:
        del h["msg_type"]
    h["date"] = h["date"].isoformat()
    return json.dumps(h).encode()


# ----------------------------------------------------------------- transports


def test_ipc_transport(tmp_path, zmq_context):
    kp = KernelProcess(tmp_path, transport="ipc")
    try:
        sockets = sorted(glob.glob(kp.info["ip"] + "-*"))
        expected = sorted(
            endpoint(kp.info, ch)[len("ipc://"):] for ch in ("shell", "iopub", "stdin", "control", "hb")
        )
        assert sockets == expected
        reply, messages = execute(kp.client, "print('over ipc')\n21 * 2")
        assert reply["status"] == "ok"
        assert stream_text(messages) == "over ipc\n"
        assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["42"]
        hb = zmq_context.socket(zmq.REQ)
        hb.linger = 0
        hb.connect(endpoint(kp.info, "hb"))
        hb.send(b"ipc-ping")
        assert hb.poll(20000)
        assert hb.recv() == b"ipc-ping"
        # A clean shutdown removes the socket files.
        kp.client.shutdown()
        assert kp.proc.wait(timeout=20) == 0
        assert glob.glob(kp.info["ip"] + "-*") == []
    finally:
        kp.close()


def test_tcp_binds_loopback_ports_from_the_file(kernel):
    info = kernel.info
    assert info["transport"] == "tcp" and info["ip"] == "127.0.0.1"
    # The client connected to exactly the ports in the file and got answers.
    assert kernel.client.kernel_info(reply=True, timeout=20)["content"]["status"] == "ok"


# ----------------------------------------------------------------- signatures


def test_badly_signed_messages_are_dropped_never_executed(kernel, zmq_context, tmp_path):
    marker = tmp_path / "must-not-exist"
    code = f"open({str(marker)!r}, 'w').close()"
    socket = dealer(zmq_context, kernel)
    good = Session(key=kernel.key)
    wrong = Session(key=b"not-the-key")

    # 1. signed with the wrong key
    wrong.send(socket, wrong.msg("execute_request", {"code": code, "silent": False}))
    # 2. no signature at all
    frames = good.serialize(good.msg("execute_request", {"code": code, "silent": False}))
    frames[1] = b""
    socket.send_multipart(frames)
    # 3. right key, but the content was changed after signing
    frames = good.serialize(good.msg("execute_request", {"code": "pass", "silent": False}))
    frames[5] = json.dumps({"code": code, "silent": False}).encode()
    socket.send_multipart(frames)
    # 4. a signature that is not even hex
    frames = good.serialize(good.msg("execute_request", {"code": code, "silent": False}))
    frames[1] = b"zz" * 32
    socket.send_multipart(frames)

    # The kernel still serves this socket, and nothing answered the forged requests.
    received = kernel_info_round_trip(socket, good)
    assert [m["msg_type"] for m in received] == ["kernel_info_reply"]
    # A properly signed execute queued behind them runs (so any accepted forgery would have run first).
    msg = good.msg("execute_request", {"code": f"import os\nos.path.exists({str(marker)!r})", "silent": False})
    good.send(socket, msg)
    _, parts = good.feed_identities(recv_frames(socket))
    reply = good.deserialize(parts)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    assert reply["content"]["status"] == "ok"
    assert not marker.exists()

    log = kernel.log()
    assert log.lower().count("signature") >= 4, log
    assert kernel.key.decode() not in log
    assert kernel.proc.poll() is None


def test_badly_signed_control_and_stdin_messages_are_dropped(kernel):
    kc = kernel.client
    wrong = Session(key=b"not-the-key", session=kc.session.session)
    # A forged shutdown on control does not stop the kernel.
    kc.control_channel.socket.send_multipart(wrong.serialize(wrong.msg("shutdown_request", {"restart": False})))
    reply, _ = request(kc, "kernel_info_request", channel="control")
    assert reply["content"]["status"] == "ok"
    assert kernel.proc.poll() is None
    # A forged input_reply is ignored; the signed one is used.
    msg_id = kc.execute("typed = input('value? ')", allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["msg_type"] == "input_request"
    kc.stdin_channel.socket.send_multipart(wrong.serialize(wrong.msg("input_reply", {"value": "forged"})))
    kc.input("genuine")
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    iopub_until_idle(kc, msg_id)
    _, messages = execute(kc, "typed")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["'genuine'"]
    assert kernel.key.decode() not in kernel.log()


# ----------------------------------------------------------------- malformed frames


def test_malformed_frames_are_logged_and_survived(kernel, zmq_context):
    key = kernel.key
    socket = dealer(zmq_context, kernel)
    good = Session(key=key)
    bogus = good.msg("bogus_request", {})
    cases = [
        [b"garbage"],
        [b"\xff\xfe\x00 not utf-8"],
        [DELIMITER, b"sig"],
        [b"sig", header(), b"{}", b"{}", b"{}"],  # no delimiter
        signed(key, b"{not json"),
        signed(key, b"\xff\xfe"),
        signed(key, header(None)),  # header without msg_type
        signed(key, header("kernel_info_request"), content=b"[1,"),
        signed(key, b"[]"),  # JSON, but not an object
        good.serialize(bogus),  # unknown msg_type
    ]
    for frames in cases:
        socket.send_multipart(frames)
    received = kernel_info_round_trip(socket, good)
    # Nothing answered the malformed messages; an unknown request may get an error reply.
    for msg in received[:-1]:
        assert msg["parent_header"].get("msg_id") == bogus["header"]["msg_id"], msg
        assert msg["msg_type"] == "bogus_reply"
        assert msg["content"]["status"] == "error"
    log = wait_for(lambda: (text := kernel.log()) and "bogus_request" in text and text, what="log of bogus_request")
    lowered = log.lower()
    assert "delimiter" in lowered
    assert "json" in lowered
    assert "msg_type" in lowered
    assert lowered.count("dropped") >= len(cases) - 1, log
    # The same on control.
    control = dealer(zmq_context, kernel, "control")
    control.send_multipart([b"garbage"])
    control.send_multipart(signed(key, header(None)))
    kernel_info_round_trip(control, good)
    # And the normal client is still served.
    assert execute(kernel.client, "1 + 1")[0]["status"] == "ok"
    assert kernel.proc.poll() is None


# ----------------------------------------------------------------- clients


def test_two_clients(kernel):
    one = kernel.client
    two = kernel.new_client()
    try:
        for sender, other, text in ((one, two, "from one"), (two, one, "from two")):
            msg_id = sender.execute(f"print({text!r})")
            reply = get_reply(sender, msg_id)
            assert reply["content"]["status"] == "ok"
            # Both clients see the output on iopub.
            for client in (sender, other):
                messages = iopub_until_idle(client, msg_id)
                assert "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream") == text + "\n"
            # The reply went to the sender only: the other client's next shell
            # message is the answer to its own request (replies are ordered per socket).
            own = other.kernel_info()
            first = other.get_shell_msg(timeout=20)
            assert first["parent_header"]["msg_id"] == own
        # Each client's input_request goes to that client only.
        msg_id = two.execute("from_two = input('two? ')", allow_stdin=True)
        assert two.get_stdin_msg(timeout=30)["parent_header"]["msg_id"] == msg_id
        two.input("2")
        assert get_reply(two, msg_id)["content"]["status"] == "ok"
        with pytest.raises(queue.Empty):
            one.get_stdin_msg(timeout=0.2)
    finally:
        two.stop_channels()


# ----------------------------------------------------------------- while busy


def test_heartbeat_and_control_answer_while_the_worker_is_busy(kernel, zmq_context):
    kc = kernel.client
    msg_id = kc.execute("print('spinning', flush=True)\nwhile True:\n    pass")
    wait_for(
        lambda: (m := kc.get_iopub_msg(timeout=20))["msg_type"] == "stream" and m["parent_header"]["msg_id"] == msg_id,
        what="the busy loop to start",
    )
    hb = zmq_context.socket(zmq.REQ)
    hb.linger = 0
    hb.connect(endpoint(kernel.info, "hb"))
    for i in range(3):
        payload = b"ping-%d" % i
        hb.send(payload)
        assert hb.poll(20000), "heartbeat did not answer while busy"
        assert hb.recv() == payload
    reply, messages = request(kc, "kernel_info_request", channel="control")
    assert reply["content"]["implementation"] == "stepkernel"
    assert [m["content"]["execution_state"] for m in messages] == ["busy", "idle"]
    # Shell kernel_info is answered too (jupyter_server sends it when a browser attaches).
    reply, _ = request(kc, "kernel_info_request", channel="shell")
    assert reply["content"]["status"] == "ok"
    # The loop is still running: stop it.
    interrupt = send_request(kc, "interrupt_request", {}, channel="control")
    assert get_reply(kc, interrupt, channel="control")["content"]["status"] == "ok"
    assert get_reply(kc, msg_id)["content"]["ename"] == "KeyboardInterrupt"
