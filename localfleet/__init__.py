"""Fleets on one machine, for the demo, the tests, the drills and the benchmarks.

Apart from `producer` on purpose: a web app imports the client, never this tooling.
"""
