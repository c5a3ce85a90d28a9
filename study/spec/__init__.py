"""The study's specification: one trial's settings, presets, study files, the one resolution step."""
