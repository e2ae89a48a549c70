"""Give a calibrated profile written before `step_jitter` existed its speed variation.

    python bench/profile_add_jitter.py IN.json OUT.json [--description TEXT]

Estimates `step_jitter` with the same code `twinbench calibrate` now runs
(`replay.calibrate_fit.estimate_jitter`) from the decode segments the profile stored in
`provenance.raw.fit_rows` and its own `step_time`: no new measurement. The provenance says so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="calibrated profile (with provenance.raw.fit_rows)")
    ap.add_argument("dest", help="profile to write")
    ap.add_argument("--description", help="replace the profile's description")
    args = ap.parse_args()
    from twinbench.replay.calibrate_fit import estimate_jitter
    from twinbench.twin.profile import Profile

    profile = Profile.load(args.src)
    d = profile.to_json()
    rows = d.get("provenance", {}).get("raw", {}).get("fit_rows")
    if not rows:
        print(f"{args.src}: no provenance.raw.fit_rows to estimate from", file=sys.stderr)
        return 2
    jitter = estimate_jitter(rows, d["step_time"])
    if jitter is None:
        print(f"{args.src}: too few decode segments, or none that vary", file=sys.stderr)
        return 2
    d["step_jitter"] = jitter
    if args.description:
        d["description"] = args.description
    d["provenance"]["step_jitter_added"] = {
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": "step_jitter estimated from this calibration's stored fit_rows and step_time "
                "(bench/profile_add_jitter.py; no new measurement)"}
    Profile.from_json(d)  # validate before writing
    with open(args.dest, "w", encoding="utf-8") as f:
        f.write(json.dumps(d, indent=1) + "\n")
    print(f"{args.dest}: step_jitter sigma {jitter['sigma']}, window {jitter['window_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
