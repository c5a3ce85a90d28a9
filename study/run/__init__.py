"""Running a study: the Ray Tune runner, results collection, Tune state, integrity, console."""
