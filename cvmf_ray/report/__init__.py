"""The report of a run, from its results.parquet alone (and its tuning.parquet, when it tuned methods):
statistics over seeds x forget sets, figures, tables.

from cvmf_ray.report import write_report, aggregate, format_aggregate, format_rows
write_report(pyarrow.parquet.read_table("results/default/results.parquet"), Path("results/default/report"),
             tuning=pyarrow.parquet.read_table("results/default/tuning.parquet"))  # tuning: optional
"""

from cvmf_ray.report.page import write_report
from cvmf_ray.report.stats import aggregate
from cvmf_ray.report.tables import format_aggregate, format_rows

__all__ = ["aggregate", "format_aggregate", "format_rows", "write_report"]
