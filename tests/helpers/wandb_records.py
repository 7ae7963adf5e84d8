"""Read what an offline W&B run recorded (its ``run-*.wandb`` transaction log), for the tests.

The file is a LevelDB-style log: a 7-byte file header, then records in 32 KiB blocks, each with
a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); the payloads are
``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, payloads = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
        elif length == 0:
            break
    records = []
    for raw in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def offline_run(run_dir: Path) -> dict:
    """Group, name, config and final summary of the one offline W&B run under ``run_dir``."""
    files = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run, config, summary, artifacts, staged, exit_code = {}, {}, {}, [], [], None
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {
                "id": record.run.run_id,
                "group": record.run.run_group,
                "name": record.run.display_name,
                "job_type": record.run.job_type,
                "tags": list(record.run.tags),
            }
            for item in record.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append(
                (record.artifact.type, [m.path for m in record.artifact.manifest.contents])
            )
            staged.append(
                (
                    record.artifact.type,
                    {m.path: Path(m.local_path) for m in record.artifact.manifest.contents},
                )
            )
        elif kind == "exit":
            exit_code = record.exit.exit_code
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or ".".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
    return {
        **run,
        "config": config,
        "summary": summary,
        "artifacts": artifacts,
        # (type, {path in the artifact: the local file wandb sync uploads})
        "artifact_files": staged,
        "exit_code": exit_code,
        "file": files[0],
    }
