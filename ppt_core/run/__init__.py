"""The study's settings, run folders and arms: the profiles every parameter comes from, the settings a run
folder remembers, the runs/<profile>/ layout with its atomic writes, the per-record files the verdicts read,
the arms of the study, and the setting errors. The bottom of the house: it imports no other package.

Public API, by module: `errors` (the shared setting errors), `artifacts` (run paths, reads and writes, digests),
`record_files` (the per-record arrays), `arms` (what each arm is), `profiles` (`get_profile`),
`run_settings` (a run folder's settings)."""
