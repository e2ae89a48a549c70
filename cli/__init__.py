"""The `twinbench` command: a thin dispatcher over commands defined beside their code."""
