"""Reads the records of a wandb offline run file (`run-<id>.wandb`) to check what was logged.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks with
a 7-byte header (crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last); each record is a
protobuf `Record` from wandb's own `wandb_internal_pb2`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FILE_HEADER = 7
CHUNK_HEADER = 7


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every protobuf Record in a `.wandb` file, in order."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run file")
    position, pending = FILE_HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < CHUNK_HEADER:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        chunk = data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged(path: Path) -> tuple[set[str], set[str], wandb_internal_pb2.RunRecord | None]:
    """(history metric names, top-level config keys, the run record) of a wandb run file."""
    metrics: set[str] = set()
    config: set[str] = set()
    run = None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            metrics |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "config":
            config |= {item.key or item.nested_key[0] for item in record.config.update}
        elif kind == "run":
            run = record.run
            config |= {item.key or item.nested_key[0] for item in record.run.config.update}
    return metrics, config, run


def exit_code(path: Path) -> int | None:
    """The exit code a wandb run file records (1 for a run finished as failed), or None if it has none."""
    codes = [record.exit.exit_code for record in records(path) if record.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None
