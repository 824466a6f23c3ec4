"""The wire format on its own: round trips, zero-copy decoding, and every kind of malformed message."""
import json

import numpy as np
import pytest

from addon.wire import protocol
from addon.wire.protocol import ErrorCode, ProtocolError


def test_request_round_trip_keeps_arrays_and_bytes():
    verts = np.arange(30, dtype=np.float32).reshape(10, 3)
    frames = protocol.encode_request("reconstruct", "r1", {"face": "all"}, {"image": b"\x89PNG", "v": verts})
    msg = protocol.decode(frames)
    assert (msg.op, msg.id, msg.params) == ("reconstruct", "r1", {"face": "all"})
    assert bytes(msg.payloads["image"]) == b"\x89PNG"
    np.testing.assert_array_equal(msg.payloads["v"], verts)


def test_decoded_arrays_are_views_on_the_frame_not_copies():
    big = np.ones((200, 200), np.float32)
    frames = protocol.encode_request("info", "r", None, {"a": big})
    frames[1] = bytearray(frames[1].tobytes())  # what arrives from the socket is a buffer
    arr = protocol.decode(frames).payloads["a"]
    frames[1][0:4] = np.float32(7).tobytes()
    assert arr[0, 0] == 7  # shares memory with the received frame


def test_face_payload_names_round_trip():
    payloads = protocol.face_payloads(3, {"vertices": np.zeros((2, 3), np.float32)})
    assert list(payloads) == ["face3/vertices"]
    assert list(protocol.split_face_payloads(payloads)[3]) == ["vertices"]


@pytest.mark.parametrize("frames, code", [
    ([], ErrorCode.BAD_REQUEST),
    ([b"\xff\xfe not json"], ErrorCode.BAD_REQUEST),
    ([b"[1, 2]"], ErrorCode.BAD_REQUEST),
    ([json.dumps({"protocol": "other", "version": protocol.VERSION}).encode()], ErrorCode.BAD_REQUEST),
    ([json.dumps({"protocol": "faceforge", "version": 99, "id": "x"}).encode()], ErrorCode.UNSUPPORTED_VERSION),
    ([json.dumps({"protocol": "faceforge", "version": protocol.VERSION, "frames": [{"name": "a", "kind": "bytes"}]}).encode()],
     ErrorCode.BAD_REQUEST),
    ([json.dumps({"protocol": "faceforge", "version": protocol.VERSION,
                  "frames": [{"name": "a", "kind": "array", "dtype": "float32", "shape": [4]}]}).encode(), b"123"],
     ErrorCode.BAD_REQUEST),
    ([json.dumps({"protocol": "faceforge", "version": protocol.VERSION,
                  "frames": [{"name": "a", "kind": "array", "dtype": "object", "shape": [1]}]}).encode(), b"12345678"],
     ErrorCode.BAD_REQUEST),
    ([b"{" + b" " * protocol.MAX_HEADER_BYTES + b"}"], ErrorCode.TOO_LARGE),
])
def test_malformed_messages_raise_precise_errors(frames, code):
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frames)
    assert info.value.code == code
    assert info.value.message


def test_limits_on_frame_count_and_total_size():
    frames = protocol.encode_request("info", "r", None, {f"p{i}": b"x" for i in range(10)})
    with pytest.raises(ProtocolError, match="frames") as info:
        protocol.decode(frames, max_frames=5)
    assert info.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError, match="bytes") as info:
        protocol.decode(protocol.encode_request("info", "r", None, {"a": b"x" * 5000}), max_bytes=4000)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_error_reply_surfaces_as_exception():
    msg = protocol.decode(protocol.encode_error("r9", ErrorCode.NO_FACE, "no face found"))
    assert not msg.ok
    with pytest.raises(ProtocolError, match="no face found"):
        msg.raise_for_error()


def test_object_arrays_cannot_be_sent():
    with pytest.raises(ValueError, match="cannot travel"):
        protocol.encode_reply("r", {}, {"x": np.array([object()])})


def _header(**fields) -> bytes:
    value = {"protocol": "faceforge", "version": protocol.VERSION, "id": "h", "op": "info", "frames": []}
    value.update(fields)
    return json.dumps(value).encode()


def _array_spec(shape, dtype="uint8") -> list:
    return [{"name": "a", "kind": "array", "dtype": dtype, "shape": shape}]


# Each of these ended the server's process before decode was hardened (issue 8).
@pytest.mark.parametrize("frames", [
    [_header(frames=_array_spec([10 ** 30])), b"x"],
    [_header(frames=_array_spec([True])), b"x"],
    [_header(frames=_array_spec([1] * 33)), b"x"],
    [_header(frames=_array_spec([2 ** 32, 2 ** 32])), b""],
    [_header(frames=_array_spec([0, 2 ** 30, 2 ** 30])), b""],
    [_header(frames=_array_spec([1], dtype=[])), b"x"],
    [b"[" * 30000 + b"]" * 30000],
    [_header(params={"face": json.loads("[" * 17 + "]" * 17)})],
], ids=["shape 1e30", "shape true", "33 dims", "2^32 x 2^32 empty", "zero-size huge", "dtype list", "nesting",
        "17 levels"])
def test_hostile_frame_specs_and_nesting_are_bad_requests(frames):
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frames)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_valid_edge_shapes_still_decode():
    for shape in ([], [0], [0, 3], [2, 2]):
        array = np.zeros(shape, np.float32)
        msg = protocol.decode([_header(frames=_array_spec(list(shape), "float32")), array.tobytes()])
        assert msg.payloads["a"].shape == tuple(shape)


@pytest.mark.parametrize("fields, code", [
    ({"version": True}, ErrorCode.UNSUPPORTED_VERSION),
    ({"version": 2.0}, ErrorCode.UNSUPPORTED_VERSION),
    ({"id": 5}, ErrorCode.BAD_REQUEST),
    ({"id": "x" * (protocol.MAX_ID_CHARS + 1)}, ErrorCode.BAD_REQUEST),
])
def test_header_fields_are_strict(fields, code):
    with pytest.raises(ProtocolError) as info:
        protocol.decode([_header(**fields)])
    assert info.value.code == code


@pytest.mark.parametrize("fields, code", [
    ({"op": ["info"]}, ErrorCode.UNKNOWN_OP),
    ({"params": [1]}, ErrorCode.BAD_REQUEST),
    ({"params": "resolution"}, ErrorCode.BAD_REQUEST),
    ({"params": None}, ErrorCode.BAD_REQUEST),
    ({"timeout_ms": True}, ErrorCode.BAD_REQUEST),
    ({"timeout_ms": 1.5}, ErrorCode.BAD_REQUEST),
])
def test_request_fields_are_strict(fields, code):
    with pytest.raises(ProtocolError) as info:
        protocol.check_request(protocol.decode([_header(**fields)]))
    assert info.value.code == code


def test_non_standard_json_is_refused_both_ways():
    with pytest.raises(ProtocolError, match="NaN"):
        protocol.decode([b'{"protocol":"faceforge","version":2,"id":"n","params":{"min_face_score":NaN}}'])
    with pytest.raises(ValueError):
        protocol.encode_reply("r", {"score": float("-inf")})


def test_read_id_never_raises_and_clip_escapes():
    assert protocol.read_id([b"[" * 30000]) == "" and protocol.read_id([]) == ""
    assert protocol.read_id([_header(id="ok-id"), b"more"]) == "ok-id"
    text = protocol.clip("a\nFORGED " * 50)
    assert "\n" not in text and len(text) <= 63 and text.startswith("'a\\nFORGED")
