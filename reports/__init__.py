"""Records, run files, metrics, comparison and rendering — one implementation for both backends."""
from twinbench.reports.records import RequestRecord
from twinbench.reports.runfile import ListSink, Run, RunFileError, RunWriter, read_run

__all__ = ["RequestRecord", "ListSink", "Run", "RunFileError", "RunWriter", "read_run"]
