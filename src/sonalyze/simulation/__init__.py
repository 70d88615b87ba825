"""The simulation service: room acoustics with pyroomacoustics, metrics by sonalyze.acoustics."""
