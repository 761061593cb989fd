"""The study's stages, each on every arm of a profile: the conformance check of a decoder, training the arms
(in this process or under torchrun), their utility and speed, every attack, and what a profile costs in wall time.

Public API, by module: `conformance`, `arm_training`, `launch` (also `python -m ppt_core.stages.launch`),
`utility`, `attacks`, `cost`."""
