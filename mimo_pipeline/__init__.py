"""mimo_pipeline: MIMO (multilingual IR via monolingual objectives) as a Dagster pipeline.

The library (everything in this package except `definitions.py`) is plain Python and
torch: it never imports Dagster.
"""

__version__ = "0.1.0"
