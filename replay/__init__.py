"""Running an experiment: a trace through a backend into a run file."""
from twinbench.replay.run import RunSink, replay_to_file, replay_to_list

__all__ = ["RunSink", "replay_to_file", "replay_to_list"]
