"""Small helpers that turn library results into Dagster metadata."""

from typing import Mapping, Sequence

from dagster import MetadataValue


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> MetadataValue:
    """A markdown table as Dagster metadata."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return MetadataValue.md("\n".join(lines))


def path_meta(path) -> MetadataValue:
    return MetadataValue.path(str(path))


def counts_meta(counts: Mapping[str, int]) -> dict:
    return {f"rows/{k}": MetadataValue.int(int(v)) for k, v in counts.items()}
