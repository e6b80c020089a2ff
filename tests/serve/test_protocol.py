"""The HTTP protocol sends each answer's head and body in one write, and nothing is held back."""

from recfunnel.serve.protocol import _HeadWithBody


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_head_goes_out_with_the_first_body_write_and_later_writes_pass():
    transport = _Transport()
    view = _HeadWithBody(transport)
    view.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    assert transport.writes == []
    view.write(b"ab")
    view.write(b"cd")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab", b"cd"]
    assert view.is_closing() is False  # the rest is the transport's


def test_continue_is_not_held_and_close_sends_a_held_head():
    transport = _Transport()
    view = _HeadWithBody(transport)
    view.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it before its body
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    view.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    view.close()
    assert transport.writes[-1] == b"HTTP/1.1 500 Internal Server Error\r\n\r\n" and transport.closed
