"""Sonalyze backend."""
