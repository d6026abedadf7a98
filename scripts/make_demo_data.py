#!/usr/bin/env python3
"""Writes the demo data of scripts/run: saved answers of the KBV doctor
search (the 116117 JSON format) for Berlin, Hamburg and Munich with
synthetic practices, and synthetic patient registrations near them.

Everything is invented: names are numbered placeholders, addresses are
test streets, emails are under example.org. Deterministic, so the files
in examples/demo only change when this script does.
"""

import json
import os
import random

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "examples", "demo")

CITIES = [
    (
        "berlin",
        "Berlin",
        "030",
        (52.520, 13.405),
        ["10115", "10117", "10119", "10178", "10243", "10405"],
    ),
    (
        "hamburg",
        "Hamburg",
        "040",
        (53.553, 9.992),
        ["20095", "20099", "20144", "22765"],
    ),
    (
        "muenchen",
        "München",
        "089",
        (48.137, 11.575),
        ["80331", "80333", "80335", "80469"],
    ),
]
PROCEDURES = [
    ("V", "Verhaltenstherapie"),
    ("T", "Tiefenpsychologisch fundierte Psychotherapie"),
    ("A", "Analytische Psychotherapie"),
    ("S", "Systemische Therapie"),
]


def practice(rng, city, n):
    """One practice of the search's answer, in its field names."""
    slug, name, area, (lat, lon), postcodes = city
    female = rng.random() < 0.65
    # Every fifth practice shares its address with the one before (a
    # group practice); every seventh has no email (phone only).
    group = n % 5 == 4
    email = (
        ""
        if n % 7 == 6
        else "praxis-%s-%02d@example.org" % (slug, n - 1 if group else n)
    )
    procedure = PROCEDURES[rng.randrange(len(PROCEDURES))]
    children = n % 6 == 5
    return {
        "id": "demo-%s-%02d" % (slug, n),
        "anrede": "Frau" if female else "Herr",
        "titel": "Dr." if n % 3 == 0 else "",
        "vorname": "Vorname%d" % n,
        "name": "Demo%s%02d" % (name[:3], n),
        "geschlecht": "W" if female else "M",
        "strasse": "Teststraße",
        "hausnummer": str(n + 1),
        "plz": postcodes[n % len(postcodes)],
        "ort": name,
        "tel": "%s %07d" % (area, 5550000 + n),
        "fax": "",
        "email": email,
        "web": "",
        "lat": round(lat + rng.uniform(-0.05, 0.05), 4),
        "lon": round(lon + rng.uniform(-0.08, 0.08), 4),
        "distance": rng.randrange(200, 9000),
        "keineSprechzeiten": False,
        "fs": ["Englisch"] if n % 4 == 0 else [],
        "ag": [
            {
                "key": "12",
                "value": (
                    "Kinder- und Jugendlichenpsychotherapeutin"
                    if children
                    else "Psychologische Psychotherapeutin"
                ),
            }
        ],
        "psy": [{"key": procedure[0], "value": procedure[1]}],
        "tsz": [
            {
                "d": "Montag",
                "t": "",
                "tszDesTyps": [
                    {
                        "typ": "Telefonische Erreichbarkeit",
                        "sprechzeiten": [{"zeit": "08:00-08:50"}],
                    },
                    {
                        "typ": "Psychotherapeutische Sprechstunde",
                        "sprechzeiten": [{"zeit": "09:00-12:00"}],
                    },
                ],
            }
        ],
    }


def patient(rng, city, n):
    """A registration command; @RUN@ becomes the run's id."""
    slug, name, _, _, postcodes = city
    year = rng.randrange(1950, 2004)
    return {
        "event_type": "patient.register",
        "payload": {
            "patient_id": "demo-%s-p%02d-@RUN@" % (slug, n),
            "details": {
                "salutation": "NONE",
                "first_name": "Demo",
                "last_name": "Person%s%02d" % (name[:3], n),
                "address": {
                    "street": "Probeweg",
                    "house_number": str(n + 1),
                    "postcode": postcodes[rng.randrange(len(postcodes))],
                    "city": name,
                },
                "email": "person-%s-%02d@example.org" % (slug, n),
                "phone": None,
                "date_of_birth": "%d-0%d-1%d"
                % (year, rng.randrange(1, 10), rng.randrange(0, 9)),
                "gender": rng.choice(["FEMALE", "MALE"]),
                "insurer": "Beispielkasse",
                "diagnosis_icd10": rng.choice(["F32.1", "F41.1", "F43.2"]),
                "consultation_hour_attended": True,
                "symptoms": [
                    rng.choice(
                        ["Antriebslosigkeit", "Unruhe", "Schlafstörungen"]
                    )
                ],
                "therapy_experience": rng.random() < 0.3,
                "last_therapy_session": None,
                "open_to_group": rng.random() < 0.4,
                "availability": [
                    {"weekday": "TUESDAY", "from": "16:00", "to": "19:00"}
                ],
                "max_distance_km": 15,
                "max_travel_minutes": None,
                "transport": "PUBLIC_TRANSPORT",
                "preferred_therapist_gender": "ANY",
                "preferred_procedures": [],
                "languages": [],
                "excluded_therapists": [],
                "consent_given_at": "2026-11-01T09:30:00Z",
            },
        },
    }


def main():
    rng = random.Random(116117)
    os.makedirs(os.path.join(OUT, "kbv"), exist_ok=True)
    patients = []
    for city in CITIES:
        answer = {
            "arztPraxisDatas": [practice(rng, city, n) for n in range(16)],
            "moreResults": False,
        }
        with open(
            os.path.join(OUT, "kbv", city[0] + ".json"), "w", encoding="utf-8"
        ) as f:
            json.dump(answer, f, ensure_ascii=False, indent=1)
            f.write("\n")
        patients.extend(patient(rng, city, n) for n in range(10))
    with open(os.path.join(OUT, "patients.json"), "w", encoding="utf-8") as f:
        json.dump(patients, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
