#!/usr/bin/env python3
"""Reference safetensors reader/writer for metastep's interop test.

Standard library only (struct + json), written from the published format
(https://github.com/huggingface/safetensors#format):

    8 bytes   N, unsigned little-endian 64-bit
    N bytes   UTF-8 JSON object {"name": {"dtype", "shape", "data_offsets"}, ...,
              optional "__metadata__": {str: str}}, padded with spaces
    rest      the data section; offsets are relative to its start and the
              tensors cover it exactly, without holes or overlaps.

Usage:
    safetensors_ref.py write PATH   write the known tensors (TENSORS below)
    safetensors_ref.py check PATH   verify that PATH (written by metastep's
                                    ms_container_save) holds exactly the known
                                    tensors, in order; print OK and exit 0, or
                                    print the problem and exit 1.

tests/test_safetensors.c builds the same tensors in C; keep the two in sync.
"""
import json
import math
import struct
import sys

SIZES = {"F32": 4, "F64": 8}
CODES = {"F32": "f", "F64": "d"}


def values(name, n):
    """The known values of each tensor (as the C test computes them)."""
    if name == "layer1/w":
        return [0.1 * i - 0.25 for i in range(n)]
    if name == "layer1/b":
        return [i / 3.0 for i in range(n)]
    if name == "layer2/deep/k":
        return [-1.5 + 0.75 * i for i in range(n)]
    if name == "scalar":
        return [3.25]
    if name == "big/rank8":
        return [i + 0.5 for i in range(n)]
    return [0.0] * n


# (name, dtype, shape), in header order.
TENSORS = [
    ("layer1/w", "F32", [2, 3]),
    ("layer1/b", "F64", [3]),
    ("layer2/deep/k", "F64", [2, 1, 2]),
    ("scalar", "F32", []),
    ("empty", "F32", [0]),
    ("layer2/empty2", "F64", [2, 0]),
    ("big/rank8", "F32", [1, 2, 1, 1, 1, 1, 1, 2]),
]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def pack(name, dtype, shape):
    n = numel(shape)
    return struct.pack("<%d%s" % (n, CODES[dtype]), *values(name, n))


def write(path):
    # Data laid out in reverse header order, to exercise readers that must
    # sort by offset; metadata first, as the reference implementation does.
    header = {"__metadata__": {"format": "pt", "source": "safetensors_ref.py"}}
    chunks = {}
    for name, dtype, shape in TENSORS:
        chunks[name] = pack(name, dtype, shape)
    data = b""
    offsets = {}
    for name, _, _ in reversed(TENSORS):
        offsets[name] = [len(data), len(data) + len(chunks[name])]
        data += chunks[name]
    for name, dtype, shape in TENSORS:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets[name]}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)


class Bad(Exception):
    pass


def no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise Bad("duplicate key %r" % k)
        d[k] = v
    return d


def same(a, b, dtype):
    if dtype == "F32":  # compare float32 bit patterns
        b = struct.unpack("<f", struct.pack("<f", b))[0]
    return a == b or (math.isnan(a) and math.isnan(b))


def check(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise Bad("file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise Bad("header length %d past the end of the file" % n)
    if n % 8:
        raise Bad("header length %d is not a multiple of 8" % n)
    text = raw[8:8 + n].decode("utf-8")
    if not text.startswith("{"):
        raise Bad("header does not start with '{'")
    if text.rstrip(" ") != text.rstrip():
        raise Bad("header padded with something other than spaces")
    header = json.loads(text, object_pairs_hook=no_duplicates)
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    if meta is not None and not all(isinstance(v, str) for v in meta.values()):
        raise Bad("__metadata__ values must be strings")
    names = list(header)
    want = [t[0] for t in TENSORS]
    if names != want:
        raise Bad("tensor names/order %r, expected %r" % (names, want))
    pos = 0
    for name, dtype, shape in TENSORS:
        e = header[name]
        if set(e) != {"dtype", "shape", "data_offsets"}:
            raise Bad("%s: fields %r" % (name, sorted(e)))
        if e["dtype"] != dtype:
            raise Bad("%s: dtype %r, expected %r" % (name, e["dtype"], dtype))
        if e["shape"] != shape:
            raise Bad("%s: shape %r, expected %r" % (name, e["shape"], shape))
        b, end = e["data_offsets"]
        # metastep writes the data in insertion (= header) order.
        if b != pos:
            raise Bad("%s: begins at %d, expected %d" % (name, b, pos))
        count = numel(shape)
        if end - b != count * SIZES[dtype]:
            raise Bad("%s: data_offsets %r do not match shape %r" % (name, [b, end], shape))
        got = struct.unpack("<%d%s" % (count, CODES[dtype]), data[b:end])
        for i, (g, w) in enumerate(zip(got, values(name, count))):
            if not same(g, w, dtype):
                raise Bad("%s[%d] = %r, expected %r" % (name, i, g, w))
        pos = end
    if pos != len(data):
        raise Bad("data section is %d bytes, tensors cover %d" % (len(data), pos))


def main(argv):
    if len(argv) != 3 or argv[1] not in ("write", "check"):
        print("usage: safetensors_ref.py write|check PATH", file=sys.stderr)
        return 2
    if argv[1] == "write":
        write(argv[2])
        return 0
    try:
        check(argv[2])
    except (Bad, ValueError, KeyError, TypeError, struct.error, OSError) as e:
        print("safetensors_ref.py: %s: %s" % (argv[2], e))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
