"""Reports of compression results: terminal tables, Markdown and PNG plots."""
from .markdown import markdown_report
from .plots import plot_accuracy_vs_ratio, plot_layer_methods
from .table import format_table, layer_table, summary_row

__all__ = ["layer_table", "format_table", "summary_row", "markdown_report", "plot_accuracy_vs_ratio",
           "plot_layer_methods"]
