#!/usr/bin/env python3
"""Checks the summary `scripts/run` printed against what the run left in
the database, the mail capture and the demo files: the test that runs the
main job as a new user would (scripts/test runs it after the test suite).

Usage: check_main_job.py LOG   (with the variables of .stack/env set)
"""

import glob
import json
import os
import re
import subprocess
import sys
import urllib.request


def sql(query):
    out = subprocess.run(
        ["psql", os.environ["DATABASE_URL"], "-Atc", query],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def number(summary, label):
    match = re.search(r"^\s*" + re.escape(label) + r":\s+(\d+)", summary, re.M)
    if not match:
        sys.exit("summary line %r missing" % label)
    return int(match.group(1))


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    if "== summary (run " not in text:
        sys.exit("no summary: the main job did not finish")
    start = text.index("== summary (run ")
    summary = text[start:]
    run_id = re.search(r"== summary \(run (\d+)", summary).group(1)
    failures = []

    def check(what, seen, expected):
        status = "ok" if seen == expected else "WRONG"
        print("%-44s %8s  expected %s  %s" % (what, seen, expected, status))
        if seen != expected:
            failures.append(what)

    files = glob.glob("examples/demo/kbv/*.json")
    practices = sum(
        len(json.load(open(f, encoding="utf-8"))["arztPraxisDatas"])
        for f in files
    )
    check(
        "practices imported",
        number(summary, "practices in the directory"),
        practices,
    )
    patients = len(json.load(open("examples/demo/patients.json")))
    check(
        "patients registered", number(summary, "patients registered"), patients
    )
    mine = "patient_id LIKE 'demo-%%-%s'" % run_id
    searched = int(
        sql(
            "SELECT count(*) FROM matcher.searches WHERE %s AND "
            "jsonb_typeof(state->'profile'->'coordinates') = 'object'" % mine
        )
    )
    check("searches with a position in the matcher", searched, patients)
    inquiries = int(
        sql(
            "SELECT count(*) FROM matcher.inquiries WHERE EXISTS (SELECT 1 "
            "FROM unnest(patient_ids) p WHERE p LIKE 'demo-%%-%s')" % run_id
        )
    )
    written = number(summary, "inquiries written")
    check(
        "inquiries written (at the summary, at most now)",
        written <= inquiries and written > 0,
        True,
    )
    placed = int(
        sql(
            "SELECT count(*) FROM matcher.searches WHERE %s AND "
            "state->>'status' = 'PLACED'" % mine
        )
    )
    check("patients placed", number(summary, "patients placed"), placed)
    check("some patients placed", placed > 0, True)
    mails = json.load(
        urllib.request.urlopen(os.environ["MAILDEV_URL"] + "/email")
    )
    per_practice = {}
    for mail in mails:
        if mail["subject"].startswith("Anfrage Therapieplatz"):
            for to in mail.get("to", []):
                address = to["address"]
                per_practice[address] = per_practice.get(address, 0) + 1
    demo = {a: n for a, n in per_practice.items() if "praxis-" in a}
    check(
        "at most one inquiry email per practice",
        max(demo.values()) if demo else 0,
        1,
    )
    check(
        "practices emailed",
        number(summary, "practices emailed so far"),
        len(per_practice),
    )
    if failures:
        sys.exit("the main job's summary disagrees: " + ", ".join(failures))
    print("main job: summary agrees with the data of run " + run_id)


if __name__ == "__main__":
    main()
