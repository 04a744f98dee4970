"""Small helpers that turn library results into Dagster metadata."""

import base64
from pathlib import Path
from typing import Sequence

from dagster import MetadataValue

from mimo_pipeline.report import markdown_table


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> MetadataValue:
    """A markdown table as Dagster metadata."""
    return MetadataValue.md(markdown_table(header, rows))


def png_meta(path, alt: str = "plot") -> MetadataValue:
    """A PNG inlined as markdown, so the Dagster UI shows the plot itself."""
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()})")


def path_meta(path) -> MetadataValue:
    return MetadataValue.path(str(path))
