"""runconsumer: crafted messages never stop a consumer (issue 11, finding 1 and the body prefix of
finding 10). A header frame close to the 131072-byte frame size must neither crash the consumer
(rabbitmq-c 0.11 overflows a heap buffer when a connection that refused a frame is closed
politely) nor stall the queue: the message ends in the DLQ and the next one is handled."""
import json
import time

import svc
from svc import RECORDER

# Largest header value that pika can still publish in one 131072-byte frame (with the
# properties publish() sets): the retry or dead-letter copy of such a message, or the same
# message once the broker added x-death, no longer fits.
NEAR_FRAME = 130600
HOSTILE = {"RETRY_DELAYS": [0.3], "MAX_ATTEMPTS": 3, "RECONNECT_MAX_DELAY": 2}


def assert_alive(p):
    log = p.log()
    assert p.proc.poll() is None, log[-3000:]
    assert "AddressSanitizer" not in log and "Segmentation" not in log, log[-3000:]
    assert "restarting worker" not in log and "killed by signal" not in log, log[-3000:]


def dead_letters(broker, p, n):
    svc.wait_until(lambda: broker.count(p.queue() + ".dlq") >= n, 30,
                   what="%d dead letter(s)\n%s" % (n, p.log()[-3000:]))
    return {props.message_id: (props.headers, body)
            for props, body in broker.get_all(p.queue() + ".dlq")}


def test_failing_message_with_a_huge_header_is_dead_lettered_not_retried(project, broker):
    # The retry copy would fit; the broker's x-death made it unreadable when it came back.
    p = project.setup_consumer(RECORDER, HOSTILE)
    p.start_consumer()
    broker.publish(p.exchange(), "job", {"n": 1, "fail": True}, message_id="huge",
                   headers={"big": "x" * NEAR_FRAME})
    broker.publish(p.exchange(), "job", {"n": 2}, message_id="next")
    svc.wait_until(lambda: p.record_count() == 1, 30, what="the next message")
    dead = dead_letters(broker, p, 1)
    headers, body = dead["huge"]
    assert json.loads(body) == {"n": 1, "fail": True}  # the body is kept
    assert headers["x-svccomm-reason"] == "headers-too-large"
    assert "big" not in headers
    assert "handler failed on attempt 1" in headers["x-svccomm-error"]
    assert headers["x-svccomm-routing-key"] == "job"
    time.sleep(1.0)
    assert broker.count(p.queue()) == 0
    assert broker.count(p.queue() + ".dlq") == 0
    assert p.log().count("failed in") == 1  # no retry that could not come back
    assert_alive(p)
    assert p.stop() == 0


def test_invalid_json_with_a_huge_header_is_dead_lettered(project, broker):
    # Its dead letter, with the x-svccomm-* headers added, was over the frame size: the broker
    # closed the publishing connection and the consumer reconnected every 0.35 s for ever.
    p = project.setup_consumer(RECORDER, HOSTILE)
    p.start_consumer()
    broker.publish(p.exchange(), "m", b'{"n": 1, oops', message_id="huge-invalid",
                   headers={"big": "y" * (NEAR_FRAME + 250)})
    broker.publish(p.exchange(), "m", {"n": 2}, message_id="next")
    svc.wait_until(lambda: p.record_count() == 1, 30, what="the next message")
    dead = dead_letters(broker, p, 1)
    headers, body = dead["huge-invalid"]
    assert body == b'{"n": 1, oops'
    assert headers["x-svccomm-reason"] == "headers-too-large"
    assert "invalid-json" in headers["x-svccomm-error"]
    assert "big" not in headers
    assert "reconnecting" not in p.log()
    assert_alive(p)
    assert p.stop() == 0


def test_header_frame_over_the_frame_size_neither_crashes_nor_stalls(project, broker):
    # The broker adds x-death when a queue dead-letters a message: a header published just
    # under the frame size reaches the consumer in a frame over 131072 bytes. rabbitmq-c 0.11
    # refuses it ("invalid AMQP data"); closing that connection politely overflowed a heap
    # buffer, and the message stayed first in the queue: a crash at every restart.
    p = project.setup_consumer(RECORDER, HOSTILE)
    feeder = p.queue("feeder")
    broker.queue(feeder, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": p.exchange()})
    p.start_consumer()
    broker.publish("", feeder, {"n": 1}, message_id="grown",
                   headers={"big": "z" * (NEAR_FRAME + 250)})
    broker.publish(p.exchange(), "after", {"n": 2}, message_id="next")
    svc.wait_until(lambda: p.record_count() >= 1, 30,
                   what="the next message\n" + p.log()[-3000:])
    # the message itself was handled (the handler succeeds) or dead-lettered, never stuck
    time.sleep(1.0)
    assert broker.count(p.queue()) == 0
    ns = sorted(r[0] for r in p.records())
    assert ns == [1, 2], ns
    assert "invalid AMQP data" not in p.log()
    assert_alive(p)
    assert p.stop() == 0


def test_grown_header_frame_whose_handler_fails_ends_in_the_dlq(project, broker):
    p = project.setup_consumer(RECORDER, HOSTILE)
    feeder = p.queue("feeder")
    broker.queue(feeder, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": p.exchange()})
    p.start_consumer()
    broker.publish("", feeder, {"n": 1, "fail": True}, message_id="grown-bad",
                   headers={"big": "z" * (NEAR_FRAME + 250)})
    broker.publish(p.exchange(), "after", {"n": 2}, message_id="next")
    dead = dead_letters(broker, p, 1)
    headers, body = dead["grown-bad"]
    assert json.loads(body) == {"n": 1, "fail": True}
    assert headers["x-svccomm-reason"] == "headers-too-large"
    assert "x-death" not in headers and "big" not in headers
    svc.wait_until(lambda: p.record_count() == 1, 30, what="the next message")
    assert broker.count(p.queue()) == 0
    assert_alive(p)
    assert p.stop() == 0


def test_oversize_body_is_dead_lettered_with_a_prefix_and_its_size(project, broker):
    p = project.setup_consumer(RECORDER, {"MAX_MESSAGE_BYTES": 100000})
    p.start_consumer()
    body = b'{"pad": "' + b"0123456789" * 20000 + b'"}'
    broker.publish(p.exchange(), "m", body, message_id="too-big")
    broker.publish(p.exchange(), "m", {"n": 2}, message_id="next")
    dead = dead_letters(broker, p, 1)
    headers, got = dead["too-big"]
    assert headers["x-svccomm-reason"] == "too-large"
    assert headers["x-svccomm-body-truncated"] == str(len(body))
    assert got == body[:4096]  # a bounded prefix, never the whole body
    svc.wait_until(lambda: p.record_count() == 1, 30, what="the next message")
    assert_alive(p)
    assert p.stop() == 0


# --- a frame no client setting can read --------------------------------------------------------

class FakeBroker:
    """A minimal AMQP 0-9-1 server on 127.0.0.1: it answers every method svccomm sends with its
    -ok and, once a consumer started, delivers a message whose content header frame announces
    2 MiB (more than any reader accepts) followed by junk. It counts the connections."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = []  # monotonic time of each accepted connection
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self):
        return "amqp://u:p@127.0.0.1:%d/" % self.port

    def close(self):
        self.closed = True
        self.sock.close()

    def _accept(self):
        import threading
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(time.monotonic())
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _frame(kind, channel, payload):
        import struct
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"

    @staticmethod
    def _method(cls, meth, args=b""):
        import struct
        return struct.pack(">HH", cls, meth) + args

    @staticmethod
    def _short(s):
        return bytes([len(s)]) + s

    def _serve(self, conn):
        import struct
        conn.settimeout(30)
        buf = b""

        def read(n):
            nonlocal buf
            while len(buf) < n:
                chunk = conn.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
            out, buf = buf[:n], buf[n:]
            return out

        def send(channel, payload):
            conn.sendall(self._frame(1, channel, payload))

        try:
            read(8)  # protocol header
            send(0, self._method(10, 10, b"\x00\x09" + struct.pack(">I", 0)
                                 + struct.pack(">I", 5) + b"PLAIN"
                                 + struct.pack(">I", 5) + b"en_US"))
            while True:
                kind, channel, size = struct.unpack(">BHI", read(7))
                payload = read(size)
                read(1)
                if kind != 1:
                    continue
                cls, meth = struct.unpack(">HH", payload[:4])
                args = payload[4:]
                if (cls, meth) == (10, 11):  # start-ok -> tune
                    send(0, self._method(10, 30, struct.pack(">HIH", 2047, 131072, 0)))
                elif (cls, meth) == (10, 40):
                    send(0, self._method(10, 41, b"\x00"))
                elif (cls, meth) == (20, 10):
                    send(channel, self._method(20, 11, struct.pack(">I", 0)))
                elif (cls, meth) == (40, 10):
                    send(channel, self._method(40, 11))
                elif (cls, meth) == (50, 10):
                    name = args[3:3 + args[2]]
                    send(channel, self._method(50, 11, self._short(name)
                                               + struct.pack(">II", 0, 0)))
                elif (cls, meth) == (50, 20):
                    send(channel, self._method(50, 21))
                elif (cls, meth) == (60, 10):
                    send(channel, self._method(60, 11))
                elif (cls, meth) == (85, 10):
                    send(channel, self._method(85, 11))
                elif (cls, meth) == (60, 20):
                    send(channel, self._method(60, 21, self._short(b"ctag")))
                    send(channel, self._method(60, 60, self._short(b"ctag")
                                               + struct.pack(">QB", 1, 0)
                                               + self._short(b"ex") + self._short(b"rk")))
                    # a content header frame of 2 MiB, then junk a stale reader would copy
                    conn.sendall(struct.pack(">BHI", 2, channel, 2 << 20) + b"\x00" * 200000)
                elif (cls, meth) == (20, 40):
                    send(channel, self._method(20, 41))
                elif (cls, meth) == (10, 50):
                    send(0, self._method(10, 51))
                    return
        except (EOFError, OSError):
            pass
        finally:
            conn.close()


def test_unreadable_frame_backs_off_without_crashing(project):
    # No reader takes a 2 MiB header frame: the consumer drops the connection (no polite close,
    # which overflowed a heap buffer in rabbitmq-c 0.11) and reconnects with a growing delay.
    fake = FakeBroker()
    try:
        p = project.setup_consumer("return nil", {"BROKER_CONNECTION_URL": fake.url(),
                                                  "RECONNECT_MAX_DELAY": 4}, use_db=False)
        p.start_consumer(wait_consuming=False)
        time.sleep(9.0)
        log = p.log()
        assert p.proc.poll() is None, log[-3000:]
        assert "AddressSanitizer" not in log and "killed by signal" not in log, log[-3000:]
        assert "restarting worker" not in log, log[-3000:]
        assert log.count("consuming '") >= 2, log[-3000:]  # it did read and reconnect
        # two connections (consume, publish) per session; sessions after 0.5, 1, 2, 4 s:
        # at most 5 in 9 s, where resetting the backoff every session made about 20
        assert len(fake.connections) <= 12, (len(fake.connections), log[-3000:])
        assert p.stop() == 0
    finally:
        fake.close()
