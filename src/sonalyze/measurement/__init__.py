"""The measurement service: jobs with a sweep to play, uploaded recordings, and their acoustic analysis."""
