"""Lambda's dual-ascent rate on a short run, with the gate logits bounded or not, and the gates'
momentum restarted where the cost crosses the target or not.

`--lam-rate`: the fixed 0.05 against `auto` (the default). `--logit-bound`: 0 (unbounded, the
default) against a bound on the logit gap (`--bounds 0,10`). Unbounded, Adam's unit steps carry a
polarized gate's gap past 20, where its gradient vanishes: a larger lambda then moves nothing.
`--gate-restart` (the default since 2026-12-04) against `--no-gate-restart` (`--restarts on,off`):
in the first steps every logit moves about the gate step size a step, all one way, and Adam's
momentum carries the cost past the target before it turns; the restart zeroes the momentum there.

The latency grid's plans (benchmarks/latency_budget.py) learn for one epoch at 64 px: about 200
steps. With the fixed rate lambda rises by about 1.5% a step at 30% over the target, so a plan can
end its learning with every gate polarized and its cost still well above the target, and the
projection then does the budget's work. This learns the grid's cp-latency plan (same baseline, same
latency table, same command) once per target, rate and bound, plans only, and records where each
lands: the table's predicted latency ratio at tau after learning and after projection, lambda at
the end, polarization and validation accuracy.

    python benchmarks/lam_rate.py [--archs efficientnet_lite0] [--targets 0.5,0.3,0.7]
                                  [--rates 0.05,auto] [--bounds 0] [--restarts off]
                                  [--out runs/bench/latency_budget]

Needs the grid's baseline and table (made here if missing, as the grid makes them; the table is
timed, so nothing heavy may run beside its profiling). Rows go to benchmarks/results/lam_rate.jsonl;
rerunning skips what is there.
"""
from __future__ import annotations

import argparse
import json

import latency_budget as lb
from _common import Rows

RATES = ["0.05", "auto"]  # today's default, and scaled to the learning steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="efficientnet_lite0")
    ap.add_argument("--targets", default="0.5,0.3,0.7")
    ap.add_argument("--rates", default=",".join(RATES))
    ap.add_argument("--bounds", default="0", help="Logit bounds (`learn --logit-bound`; 0: unbounded).")
    ap.add_argument("--restarts", default="off",
                    help="on, off, or on,off (`learn --gate-restart`; off: as the rows before it existed).")
    lb.plan_arguments(ap)
    a = ap.parse_args()
    rows = Rows("lam_rate")
    for arch in a.archs.split(","):
        base = lb.baseline(arch, a.out, a)
        lut = lb.profile(arch, base, a.out)
        for t in [float(s) for s in a.targets.split(",")]:
            for rate, bound, restart in [(r, b, s) for s in a.restarts.split(",") for b in a.bounds.split(",")
                                         for r in a.rates.split(",")]:
                if restart not in ("on", "off"):
                    ap.error(f"--restarts: on or off, got {restart!r}")
                bound = f"{float(bound):g}"
                # rows before the bound (the restart) existed were unbounded (without it) and keyed without it
                tag = "" if bound == "0" else f"b{bound}"
                key = "/".join(filter(None, [arch, f"t{t}", rate, tag, "restart" if restart == "on" else ""]))
                if key in rows:
                    continue
                run = a.out / "lam_rate" / "_".join(filter(None, [arch, f"t{t}", rate, tag,
                                                                  "restart" if restart == "on" else ""]))
                got = lb.learn(arch, base, run, a, "--budget", "latency", "--lut", str(lut), "--target", str(t),
                               "--lam-rate", rate, "--logit-bound", bound,
                               "--gate-restart" if restart == "on" else "--no-gate-restart")
                last, fr = got["learning"], got["frozen"]
                rows.add({"key": key, "arch": arch, "target": t, "lam_rate": rate, "logit_bound": float(bound),
                          "gate_restart": restart == "on", "first_crossing": last.get("first_crossing"),
                          "rate_used": last["lambda_rate"],
                          "steps": fr.get("steps"), "frozen": fr.get("reason"),
                          "latency_learned": fr.get("cost_ratio_at_tau"),
                          "latency_projected": (got["projected"] or {}).get("to", fr.get("cost_ratio_at_tau")),
                          "lambda_end": last["lambda"], "polarized": last["polarized"],
                          "val_accuracy": got["result"].get("val_accuracy"), "seconds": got["seconds"],
                          "limit": a.limit, "epochs": a.epochs, "lut": str(lut), "command": got["command"]})
                print(json.dumps(rows.get(key)), flush=True)


if __name__ == "__main__":
    main()
