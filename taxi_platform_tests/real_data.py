"""The real TLC files of the `realdata` test tier: fetched from their public URLs and verified by sha256.

    python -m taxi_platform_tests.real_data            # download what is missing into the cache, verify all

`real_data.tsv` (beside this file) lists each file's path (laid out like the public sources), URL, size,
sha256 and data rows. Where TAXI_SAMPLE_DATA names a folder holding them (CI: ../shared/data/nyc-tlc),
that folder is used instead, after the same sha256 check; else the cache, TAXI_REAL_DATA_CACHE or
~/.cache/taxi_platform/nyc-tlc.
"""

import csv
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

MANIFEST = Path(__file__).with_name("real_data.tsv")
FETCH_COMMAND = "python -m taxi_platform_tests.real_data"


class RealDataMissing(Exception):
    """The files are not there, or not the files the manifest names."""


def manifest() -> dict[str, dict]:
    """{path: {"url", "bytes", "sha256", "rows"}} of every real file."""
    with open(MANIFEST) as f:
        return {row["path"]: row for row in csv.DictReader(f, delimiter="\t")}


def cache_folder() -> Path:
    default = Path.home() / ".cache" / "taxi_platform" / "nyc-tlc"
    return Path(os.environ.get("TAXI_REAL_DATA_CACHE") or default)


def real_data_folder() -> Path:
    """The folder holding every manifest file, each verified; RealDataMissing says what is wrong."""
    sample = os.environ.get("TAXI_SAMPLE_DATA")
    folder = Path(sample) if sample else cache_folder()
    problems = [problem for path, entry in manifest().items() if (problem := _check(folder / path, entry))]
    if problems:
        raise RealDataMissing(f"{folder}: " + "; ".join(problems[:3]) + f" (fetch them: {FETCH_COMMAND})")
    return folder


def fetch() -> Path:
    """Download every missing or wrong file into the cache, then verify them all."""
    folder = cache_folder()
    for path, entry in manifest().items():
        target = folder / path
        if _check(target, entry) is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        print(f"fetching {entry['url']}", file=sys.stderr)
        with urllib.request.urlopen(entry["url"], timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        if problem := _check(partial, entry):
            partial.unlink()
            raise RealDataMissing(f"{entry['url']}: {problem}")
        partial.replace(target)
    return real_data_folder()


def _check(file: Path, entry: dict) -> str | None:
    """What is wrong with `file` against its manifest entry, or None."""
    if not file.is_file():
        return f"{file.name} is missing"
    if file.stat().st_size != int(entry["bytes"]):
        return f"{file.name} has {file.stat().st_size} bytes, not {entry['bytes']}"
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != entry["sha256"]:
        return f"{file.name} has sha256 {digest.hexdigest()}, not {entry['sha256']}"
    return None


if __name__ == "__main__":
    if os.environ.get("TAXI_SAMPLE_DATA"):
        print(f"verified: {real_data_folder()}")
    else:
        print(f"fetched and verified: {fetch()}")
