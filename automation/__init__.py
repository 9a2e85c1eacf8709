"""Pipeline automation: rules from ``config/automation.yaml`` run as handlers of the event
log and of timers (docs/automation.md).

- :mod:`automation.durations`, :mod:`automation.calendar`, :mod:`automation.clock` — time:
  durations in minutes, hours, working hours and working days; the working calendar;
  an injectable clock.
- :mod:`automation.rules` — the rule language (pydantic models of the YAML);
  :mod:`automation.event_schemas` — the data of the events automation appends.
- :mod:`automation.conditions`, :mod:`automation.templates`, :mod:`automation.expressions`,
  :mod:`automation.people`, :mod:`automation.evaluate` — the pure part: event + entity
  snapshot + rules → planned actions and timers.
- :mod:`automation.snapshot`, :mod:`automation.actions`, :mod:`automation.worker` — the
  I/O part: reading entities, carrying out actions, following the event log and firing
  timers.

This package's models import nothing from ``config`` (``config.models`` imports them).
"""
