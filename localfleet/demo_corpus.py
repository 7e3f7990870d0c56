"""A synthetic sample corpus for the demo: varied, deterministic, and free of licence strings."""

from __future__ import annotations

import itertools

SUBJECTS = (
    "A chef",
    "The pilot",
    "A young student",
    "An old fisherman",
    "The nurse",
    "A street musician",
    "The software engineer",
    "A farmer",
    "The goalkeeper",
    "A painter",
    "The bus driver",
    "A marine biologist",
    "The librarian",
    "A firefighter",
    "The astronaut",
    "A baker",
    "The shop owner",
    "A mountain guide",
    "The journalist",
    "A veterinarian",
)
ACTIVITIES = (
    "is slicing onions for a soup",
    "is reading a long novel",
    "is repairing a broken bicycle",
    "is playing a guitar",
    "is writing code for a web server",
    "is feeding a hungry dog",
    "is painting a portrait",
    "is landing a plane in heavy rain",
    "is counting money at the till",
    "is climbing a steep rock face",
    "is teaching children to swim",
    "is watering tomato plants",
    "is putting out a small fire",
    "is interviewing a politician",
    "is taking photos of whales",
    "is kneading dough for bread",
    "is stopping a penalty kick",
    "is checking a patient's pulse",
    "is sorting returned books",
    "is looking at the stars through a telescope",
)
SETTINGS = (
    "in a busy city",
    "on a quiet morning",
    "late at night",
    "during a storm",
    "near the harbour",
    "at the edge of a forest",
    "in a small village",
    "on a crowded train",
)


def demo_corpus() -> list[str]:
    return [
        f"{who} {what} {where}." for who, what, where in itertools.product(SUBJECTS, ACTIVITIES, SETTINGS)
    ]


DEMO_QUERIES = (
    "someone cooking in a kitchen",
    "a doctor examining a sick person",
    "a sports match",
    "space exploration",
)
