"""Hostile messages for the server, by family, each with the reply it must get; and a driver.

Shared by tests/test_server_fuzz.py (a few thousand messages) and benchmarks/fuzz_server.py (10,000+).
Every case says which error codes are acceptable (``OK`` for the valid requests interleaved with
the abuse) and which id the reply must carry ('' when the header yields no readable id). The server
answers every message, even one without a readable id, so the documented drops are none.
The server under test runs with ``FUZZ_SERVER_ARGS`` (tight limits, so the oversize families are cheap).
"""
from __future__ import annotations

import io
import json
import random
import statistics
import struct
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import zmq
from PIL import Image

from addon.wire import options, protocol
from addon.wire.protocol import ErrorCode

OK = "ok"
BAD, LARGE, IMAGE = ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.BAD_IMAGE
FUZZ_SERVER_ARGS = ("--max-message-mb", "2", "--max-pixels", "4000000", "--max-texture-size", "1024",
                    "--max-reply-mb", "16", "--max-queue", "8")
CHEAP = {"resolution": 16, "texture_size": 64, "depth_size": 16}  # a valid request that costs little
V = protocol.VERSION


@dataclass
class Case:
    family: str
    frames: list
    expect: frozenset
    id: str = ""
    worker: bool = False  # reaches the reconstruction worker (slow) rather than being refused at once


def header(request_id, op="info", params=None, frames=(), **fields) -> dict:
    value = {"protocol": "faceforge", "version": V, "id": request_id, "op": op, "params": params or {},
             "frames": list(frames)}
    value.update(fields)
    return value


def raw(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


IMAGE_FRAME = {"name": "image", "kind": "bytes"}


# ------------------------------------------------------------------------------------------------
# Families. Each takes (rng, n, photos) and returns one Case; n makes ids unique.

def frames_family(rng, n, photos) -> Case:
    rid = f"fr{n}"
    choice = rng.randrange(6)
    if choice == 0:
        return Case("frames", [raw(header(rid, frames=[IMAGE_FRAME]))], frozenset({BAD}), rid)
    if choice == 1:
        return Case("frames", [raw(header(rid)), b"extra", b"frames"], frozenset({BAD}), rid)
    if choice == 2:
        extra = rng.randrange(64, 90)
        return Case("frames", [raw(header(rid))] + [b"x"] * extra, frozenset({LARGE}), rid)
    if choice == 3:
        return Case("frames", [b""], frozenset({BAD}))
    if choice == 4:
        return Case("frames", [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))], frozenset({BAD}))
    return Case("frames", [raw(header(rid, frames=[IMAGE_FRAME] * 3)), b"a"], frozenset({BAD}), rid)


_BAD_VERSIONS = [True, False, str(V), float(V), 1, V - 1, V + 1, None, [], {}, 2 ** 70, -2]
_BAD_IDS = [5, None, [], {}, "x" * 129, 1.5, True]
_ODD_GOOD_IDS = ["a\nFORGED line", "\u202eevil", "", "x" * 128, "\x1b[31mred", "id with spaces"]
_BAD_OPS = [5, None, "", "explode", "info\n", ["info"], "INFO"]
_BAD_PARAMS = [[], "s", 5, None, True, [1, 2]]
_BAD_TIMEOUTS = [True, 0, -1, 1.5, "5", 10 ** 20, [], protocol.MAX_TIMEOUT_MS + 1]


def header_family(rng, n, photos) -> Case:
    rid = f"hd{n}"
    choice = rng.randrange(9)
    if choice == 0:
        return Case("header", [raw(header(rid, version=rng.choice(_BAD_VERSIONS)))],
                    frozenset({ErrorCode.UNSUPPORTED_VERSION}), rid)
    if choice == 1:
        return Case("header", [raw(header(rng.choice(_BAD_IDS)))], frozenset({BAD}))
    if choice == 2:  # strange but valid ids: answered, and echoed exactly (never forging log lines)
        odd = rng.choice(_ODD_GOOD_IDS)
        return Case("header", [raw(header(odd))], frozenset({OK}), odd)
    if choice == 3:
        return Case("header", [raw(header(rid, op=rng.choice(_BAD_OPS)))], frozenset({ErrorCode.UNKNOWN_OP}), rid)
    if choice == 4:
        return Case("header", [raw(header(rid, params=None) | {"params": rng.choice(_BAD_PARAMS)})],
                    frozenset({BAD}), rid)
    if choice == 5:
        return Case("header", [raw(header(rid, timeout_ms=rng.choice(_BAD_TIMEOUTS)))], frozenset({BAD}), rid)
    if choice == 6:
        return Case("header", [raw(rng.choice([[], "header", 5, None, [header(rid)]]))], frozenset({BAD}))
    if choice == 7:
        protocol_value = rng.choice([None, "other", 5, ["faceforge"], "FACEFORGE"])
        return Case("header", [raw(header(rid, protocol=protocol_value))], frozenset({BAD}), rid)
    text = rng.choice([b'{"protocol":"faceforge","version":NaN}', b'\xef\xbb\xbf{"a":1}', b'{"a":Infinity}',
                       b'\xff\xfe{}', b'{"protocol":"faceforge"', b'{"a":-Infinity,"id":"x"}'])
    return Case("header", [text], frozenset({BAD}))


_BAD_DTYPES = ["object", [], None, 5, "float128", "<f4", "U10", "V8", "complex64", "O", {"a": 1}]
_BAD_SHAPES = [[10 ** 30], [True], [1] * 33, [2 ** 32, 2 ** 32], [-1], [1.5], "5", None, [[1]], [0, 2 ** 40],
               [2 ** 31], [False, 1], [0] * 33]
_BAD_NAMES = [5, None, "x" * 200, [], {"n": 1}]
_BAD_KINDS = ["blob", None, 5, [], "ARRAY"]


def frame_spec_family(rng, n, photos) -> Case:
    rid = f"fs{n}"
    data = bytes(rng.randrange(0, 4) * 4)
    desc = {"name": "a", "kind": "array", "dtype": "uint8", "shape": [len(data)]}
    choice = rng.randrange(6)
    if choice == 0:
        desc["dtype"] = rng.choice(_BAD_DTYPES)
    elif choice == 1:
        desc["shape"] = rng.choice(_BAD_SHAPES)
        data = rng.choice([b"", b"x", bytes(16)])
    elif choice == 2:
        desc["name"] = rng.choice(_BAD_NAMES)
    elif choice == 3:
        desc["kind"] = rng.choice(_BAD_KINDS)
    elif choice == 4:
        desc = rng.choice([None, 5, "frame", [desc], {}])
    else:  # valid arrays and bytes of every allowed kind: an info request carrying them is fine
        dtype = rng.choice(sorted(protocol._ALLOWED_DTYPES))
        array = np.zeros(rng.choice([(0,), (3,), (2, 2), (0, 3), ()]), dtype)
        spec = {"name": "a", "kind": "array", "dtype": dtype, "shape": list(array.shape)}
        return Case("frame_spec", [raw(header(rid, frames=[spec])), array.tobytes()], frozenset({OK}), rid)
    return Case("frame_spec", [raw(header(rid, frames=[desc])), data], frozenset({BAD}), rid)


def _bad_values(option: options.Option) -> list:
    if option.kind is bool:
        return [1, 0, "true", None, [], {}]
    if option.name == "video_frames":  # START:STOP, either side may be empty
        return ["a:b", "9:5", "-1:4", "3:3", "1:2:3", "\u00b2:", "../x", 5, None, ["0:1"], True]
    if option.kind is str and not option.choices:  # a free name (depth_model): wrong types, paths, junk
        return ["../x", "/etc/passwd", "a/b", "-1", "\u00b2", "9" * 1000, 5, None, ["x"], True]
    if option.kind is str:
        return ["\u00b2", "", "ALL", "-1", "100", 5, None, "9" * 1000, ["all"], True]
    common = [True, None, [], {}, "1", 10 ** 30, -(10 ** 30)]
    below = [option.minimum - 1, option.minimum - 0.5] if option.minimum is not None else []
    above = [option.maximum + 1, option.maximum * 10 + 1] if option.maximum is not None else []
    return common + below + above + ([1.5, 8.9] if option.kind is int else [])


_REQUEST_OPTIONS = options.on_side(options.SERVER, options.LIMIT)
_NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]


def params_family(rng, n, photos) -> Case:
    rid = f"pa{n}"
    option = rng.choice(_REQUEST_OPTIONS)
    choice = rng.randrange(5)
    photo = rng.choice(photos)
    if choice == 0 and option.kind is not str:  # non-standard JSON numbers, written by hand
        text = raw(header(rid, "reconstruct", {option.name: 987654321}, [IMAGE_FRAME]))
        text = text.replace(b"987654321", rng.choice(_NON_FINITE))
        # 1e999 parses to inf, refused as a value; the NaN/Infinity names are refused as JSON.
        return Case("params", [text, photo], frozenset({BAD}), rid if b"e999" in text else "")
    if choice == 1:
        name = rng.choice(["Resolution", "resolution ", "max_pixels\n", "smooth_iterations", "", "x" * 300])
        return Case("params", [raw(header(rid, "reconstruct", {name: 1}, [IMAGE_FRAME])), photo], frozenset({BAD}), rid)
    if choice == 2:  # ceilings: above the server's limit is too_large (texture 1024, pixels 4 MP)
        name, value = rng.choice([("texture_size", 2048), ("max_pixels", 4_000_001), ("max_pixels", 200_000_000),
                                  ("texture_size", 1025)])
        return Case("params", [raw(header(rid, "reconstruct", {name: value}, [IMAGE_FRAME])), photo],
                    frozenset({LARGE}), rid)
    value = rng.choice(_bad_values(option))
    return Case("params", [raw(header(rid, "reconstruct", {option.name: value}, [IMAGE_FRAME])), photo],
                frozenset({BAD}), rid)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` with almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_family(rng, n, photos) -> Case:
    rid = f"im{n}"
    noise = np.random.default_rng(n).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    choice = rng.randrange(8)
    expect = frozenset({IMAGE})
    if choice == 0:
        data = rng.choice([b"", bytes(rng.randrange(256) for _ in range(200)), b"\x89PNG\r\n\x1a\n", b"GIF89a"])
    elif choice == 1:  # a real photo cut short: may still decode (then it has a face, or not)
        photo = rng.choice(photos)
        data = photo[:rng.randrange(1, len(photo))]
        expect = frozenset({IMAGE, OK, ErrorCode.NO_FACE})
    elif choice == 2:
        data, expect = png_header_only(*rng.choice([(16000, 16000), (4001, 1000), (2 ** 31 - 1, 2 ** 31 - 1)])), \
            frozenset({LARGE, IMAGE})
    elif choice == 3:
        data = _encoded(np.zeros(rng.choice([(1, 1, 3), (1, 4000, 3), (4000, 1, 3), (20, 20, 3)]), np.uint8), "PNG")
    elif choice == 4:
        data = _encoded(noise, rng.choice(["GIF", "PPM", "ICO", "TGA"]))  # formats the server does not take
    elif choice == 5:  # supported formats without a face
        data = _encoded(noise, rng.choice(["PNG", "BMP", "TIFF", "WEBP", "JPEG"]))
        expect = frozenset({ErrorCode.NO_FACE})
    elif choice == 6:  # slivers: decode fine, no face can fit
        data = _encoded(np.zeros(rng.choice([(32, 4000, 3), (4000, 32, 3)]), np.uint8), "PNG")
        expect = frozenset({ErrorCode.NO_FACE})
    else:  # the image as an array, or no image at all: refused before the worker
        spec = rng.choice([{"name": "image", "kind": "array", "dtype": "uint8", "shape": []},
                           {"name": "photo", "kind": "bytes"}])
        data = b"\x01" if spec["kind"] == "array" else rng.choice(photos)
        return Case("image", [raw(header(rid, "reconstruct", CHEAP, [spec])), data], frozenset({BAD}), rid)
    return Case("image", [raw(header(rid, "reconstruct", CHEAP, [IMAGE_FRAME])), data], expect, rid, worker=True)


def oversize_family(rng, n, photos) -> Case:
    rid = f"ov{n}"
    if rng.randrange(2):
        padding = "x" * (protocol.MAX_HEADER_BYTES + rng.randrange(1, 1000))
        return Case("oversize", [raw(header(rid, pad=padding))], frozenset({LARGE}))
    big = bytes(2 * 1024 * 1024 + rng.randrange(1, 4096))  # over the fuzz server's 2 MB
    return Case("oversize", [raw(header(rid, "reconstruct", CHEAP, [IMAGE_FRAME])), big], frozenset({LARGE}), rid)


def nesting_family(rng, n, photos) -> Case:
    rid = f"ne{n}"
    depth = rng.choice([17, 40, 1000, 30000])
    nested = "[" * depth + "]" * depth
    where = rng.randrange(4)
    if where == 0:
        text = nested
    elif where == 1:
        text = raw(header(rid, params={"face": "NEST"})).decode().replace('"NEST"', nested)
    elif where == 2:
        text = raw(header(rid, frames=[{"name": "a", "kind": "array", "dtype": "uint8", "shape": "NEST"}])
                   ).decode().replace('"NEST"', nested)
    else:
        text = raw(header("NEST")).decode().replace('"NEST"', nested)
    frames = [text.encode()]
    expect = frozenset({BAD, LARGE})  # LARGE: 30000 levels make a header over 64 KB
    if rng.randrange(3) == 0:
        frames += [b"x"] * 65
        expect = frozenset({LARGE})
    return Case("nesting", frames, expect)


def valid_family(rng, n, photos) -> Case:
    rid = f"ok{n}"
    if rng.randrange(3) == 0:
        return Case("valid", [raw(header(rid, "cancel", {"id": "nothing-running"}))], frozenset({OK}), rid)
    return Case("valid", [raw(header(rid))], frozenset({OK}), rid)


def valid_reconstruct(n: int, photos) -> Case:
    rid = f"ok{n}"
    photo = photos[n % len(photos)]
    return Case("valid", [raw(header(rid, "reconstruct", CHEAP, [IMAGE_FRAME], timeout_ms=120_000)), photo],
                frozenset({OK}), rid, worker=True)


FAMILIES = {"frames": (frames_family, 10), "header": (header_family, 10), "frame_spec": (frame_spec_family, 10),
            "params": (params_family, 10), "image": (image_family, 0.6), "oversize": (oversize_family, 1),
            "nesting": (nesting_family, 3), "valid": (valid_family, 0.8)}


RECONSTRUCT_EVERY = 250  # a valid reconstruction among this many messages: the worker's share stays known


def cases(count: int, seed: int, photos: list[bytes]):
    """``count`` cases drawn by weight with a fixed seed (the same messages every run), and a valid
    reconstruction every ``RECONSTRUCT_EVERY``."""
    rng = random.Random(seed)
    names = list(FAMILIES)
    weights = [FAMILIES[name][1] for name in names]
    for n in range(count):
        if n % RECONSTRUCT_EVERY == RECONSTRUCT_EVERY // 2:
            yield valid_reconstruct(n, photos)
        else:
            yield FAMILIES[rng.choices(names, weights)[0]][0](rng, n, photos)


# ------------------------------------------------------------------------------------------------
# Driver

@dataclass
class Outcome:
    case: Case
    code: str | None      # OK, an error code, or None when no reply came
    reply_id: str | None
    seconds: float


@dataclass
class Report:
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Every case whose reply broke its expectation (missing, wrong code, wrong id, internal)."""
        found = []
        for out in self.outcomes:
            if out.code is None:
                found.append(f"{out.case.family} {out.case.id!r}: no reply")
            elif out.code not in out.case.expect:
                found.append(f"{out.case.family} {out.case.id!r}: {out.code}, expected {sorted(out.case.expect)}")
            elif out.reply_id != out.case.id:
                found.append(f"{out.case.family}: reply id {out.reply_id!r}, expected {out.case.id!r}")
        return found

    def table(self) -> str:
        by_family = defaultdict(list)
        for out in self.outcomes:
            by_family[out.case.family].append(out)
        lines = [f"{'family':<11} {'sent':>6} {'replies':>7} {'p50 ms':>8} {'p99 ms':>8} {'total s':>8}  codes"]
        for family, outs in sorted(by_family.items()):
            ms = sorted(o.seconds * 1000 for o in outs)
            codes = Counter(o.code for o in outs)
            lines.append(f"{family:<11} {len(outs):>6} {sum(o.code is not None for o in outs):>7} "
                         f"{statistics.median(ms):>8.1f} {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:>8.1f} "
                         f"{sum(ms) / 1000:>8.1f}  "
                         + ", ".join(f"{code}={k}" for code, k in codes.most_common()))
        return "\n".join(lines)


def run(address: str, all_cases, reply_timeout: float = 60.0) -> Report:
    """Send each case on one DEALER and wait for its reply (progress messages skipped)."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    report = Report()
    started = time.monotonic()
    try:
        for case in all_cases:
            sent = time.monotonic()
            socket.send_multipart(case.frames)
            code = reply_id = None
            while socket.poll(int(reply_timeout * 1000)):
                reply = protocol.decode(socket.recv_multipart(), expect_version=None)
                if reply.progress is None:
                    code, reply_id = (OK if reply.ok else reply.error.code), reply.id
                    break
            report.outcomes.append(Outcome(case, code, reply_id, time.monotonic() - sent))
    finally:
        socket.close()
    report.seconds = time.monotonic() - started
    return report


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


def small_photos(photos: list[bytes], side: int = 160) -> list[bytes]:
    """JPEG thumbnails: valid requests that cost the worker little."""
    out = []
    for data in photos:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image.thumbnail((side, side))
        out.append(_encoded(np.asarray(image), "JPEG"))
    return out
