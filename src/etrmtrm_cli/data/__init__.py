"""ARC data: tasks (arc), augmentations (augment), the token canvas (canvas), batches (dataset)."""

from etrmtrm_cli.data.dataset import ArcData, Batch, build_arc_data
from etrmtrm_cli.data.summary import DataSummary, summarize

__all__ = ["ArcData", "Batch", "DataSummary", "build_arc_data", "summarize"]
