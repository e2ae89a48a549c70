"""Records, run files, metrics, comparison and rendering — one implementation for both backends."""
from twinbench.reports.records import RequestRecord
from twinbench.reports.runfile import ListSink, Run, RunFileError, RunWriter, read_run
from twinbench.reports.sketch import QuantileSketch
from twinbench.reports.metrics import DEFINITIONS, Summary, summarize
from twinbench.reports.compare import Comparison, compare, noise_floor
from twinbench.reports.regression import parse_fail_on, regression_gate
from twinbench.reports.vllm_io import read_vllm_result, to_vllm_result

__all__ = ["RequestRecord", "ListSink", "Run", "RunFileError", "RunWriter", "read_run",
           "QuantileSketch", "DEFINITIONS", "Summary", "summarize", "Comparison", "compare",
           "noise_floor", "parse_fail_on", "regression_gate", "read_vllm_result",
           "to_vllm_result"]
