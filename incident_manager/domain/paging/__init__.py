"""Paging: who is told about an incident, through what, and when.

Pure values and rules, no I/O: the paging configuration (`model`), who is on
call (`schedules`), which route and which silences apply (`routing`), and the
plan of escalation steps with the deliveries each level needs (`escalation`).
Reading the YAML file is `incident_manager.paging.file`; sending,
storing and timing belong to the outer layers. docs/PAGING.md describes it all.
"""
