#!/usr/bin/env python3
"""Rewrite one tensor of a safetensors file (for the command's tests).

    ckpt_edit.py FILE KEY DTYPE SHAPE VALUES   set KEY (e.g. F64 "[]" "[nan]")
    ckpt_edit.py FILE KEY del                  remove KEY
    ckpt_edit.py FILE KEY get                  print KEY's values as JSON
VALUES is a JSON list; "nan", "inf", "-inf" strings stand for those values.
"""
import json
import struct
import sys


def read(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", None)
    tensors = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        tensors[k] = (v["dtype"], v["shape"], body[a:b])
    return meta, tensors


def write(path, meta, tensors):
    header, body = {}, b""
    for k, (dt, shape, raw) in tensors.items():
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + body)


def main():
    path, key, op = sys.argv[1], sys.argv[2], sys.argv[3]
    meta, tensors = read(path)
    fmt = {"F32": "f", "F64": "d"}
    if op == "del":
        tensors.pop(key)
    elif op == "get":
        dt, shape, raw = tensors[key]
        print(json.dumps(list(struct.unpack("<%d%s" % (len(raw) // struct.calcsize(fmt[dt]), fmt[dt]), raw))))
        return
    else:
        shape = json.loads(sys.argv[4])
        vals = [float(v) for v in json.loads(sys.argv[5])]
        tensors[key] = (op, shape, struct.pack("<%d%s" % (len(vals), fmt[op]), *vals))
    write(path, meta, tensors)


main()
