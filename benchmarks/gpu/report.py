"""The GPU check's result file, ``gpu-check.json``: its schema, merging and the docs table.

One file per folder holds every part that was run into it, each part under its own
name with the device, date and commit it ran on; running a part again replaces that
part only. The top level says where and when the file was last written.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: exactly the keys of one bench row
ROW_KEYS = (
    "arch", "defense", "precision", "channels_last", "compile", "batch_size", "images_per_s",
    "reference_images_per_s", "tflops", "fraction_of_peak", "peak_memory_gb",
)
TOP_KEYS = ("device", "torch", "tf32", "date", "commit", "parts")
PART_KEYS = ("device", "torch", "date", "commit", "smoke", "seconds", "rows")
#: bf16 dense tensor-core peak of an H100 or H200 SXM, TFLOP/s
PEAK_BF16_TFLOPS = 989.0
#: CIFAR-10's training set, for the implied epoch time
CIFAR10_TRAIN = 50_000

_NUMBER_OR_NULL = ("images_per_s", "reference_images_per_s", "tflops", "fraction_of_peak", "peak_memory_gb")


def problems(doc: Any) -> list[str]:
    """What is wrong with a ``gpu-check.json`` document (empty when nothing is)."""
    if not isinstance(doc, dict):
        return ["the document is not a JSON object"]
    found = [f"missing top-level key {k!r}" for k in TOP_KEYS if k not in doc]
    parts = doc.get("parts")
    if not isinstance(parts, dict) or not parts:
        return found + ["'parts' must be a non-empty object"]
    for name, part in parts.items():
        missing = [k for k in PART_KEYS if k not in part]
        found += [f"part {name!r}: missing key {k!r}" for k in missing]
        for i, row in enumerate(part.get("rows") or []):
            found += [f"part {name!r} row {i}: {p}" for p in _row_problems(row)]
    return found


def _row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["not an object"]
    if tuple(sorted(row)) != tuple(sorted(ROW_KEYS)):
        extra, missing = sorted(set(row) - set(ROW_KEYS)), sorted(set(ROW_KEYS) - set(row))
        return [f"keys differ (extra {extra}, missing {missing})"]
    bad = [k for k in _NUMBER_OR_NULL if row[k] is not None and not isinstance(row[k], (int, float))]
    if not isinstance(row["images_per_s"], (int, float)) or row["images_per_s"] <= 0:
        bad.append("images_per_s")
    if not isinstance(row["batch_size"], int) or not all(isinstance(row[k], bool) for k in ("channels_last", "compile")):
        bad.append("batch_size/channels_last/compile")
    return [f"bad value of {k}" for k in bad]


def load(path: Path) -> dict[str, Any]:
    """The document at ``path``, or an empty one to merge parts into."""
    if not path.is_file():
        return {"parts": {}}
    return json.loads(path.read_text())


def merge_part(path: Path, header: dict[str, Any], name: str, part: dict[str, Any]) -> dict[str, Any]:
    """Write ``part`` under ``name`` into the file at ``path`` (atomically), the header on top."""
    doc = load(path)
    doc.update(header)
    doc["parts"] = {**doc.get("parts", {}), name: part}
    ordered = {k: doc[k] for k in TOP_KEYS if k in doc} | {k: v for k, v in doc.items() if k not in TOP_KEYS}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpu-check.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(ordered, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return ordered


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(doc: dict[str, Any]) -> str:
    """The bench rows of every part as a Markdown table, with the implied CIFAR-10 epoch time."""
    lines = [
        "| part | arch | defense | precision | channels-last | compile | batch | images/s | reference images/s "
        "| speed-up | TFLOP/s | of bf16 peak | peak memory (GB) | CIFAR-10 epoch (s) |",
        "|" + "---|" * 14,
    ]
    for name, part in doc["parts"].items():
        for r in part.get("rows") or []:
            ref = r["reference_images_per_s"]
            lines.append("| " + " | ".join([
                name, r["arch"], r["defense"], r["precision"], "yes" if r["channels_last"] else "no",
                "yes" if r["compile"] else "no", str(r["batch_size"]), f"{r['images_per_s']:.0f}", _fmt(ref, ".0f"),
                "-" if not ref else f"{r['images_per_s'] / ref:.2f}x", _fmt(r["tflops"], ".1f"),
                "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%",
                _fmt(r["peak_memory_gb"], ".1f"), f"{CIFAR10_TRAIN / r['images_per_s']:.0f}",
            ]) + " |")
    return "\n".join(lines)
