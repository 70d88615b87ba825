"""``sonalyze demo``: a complete measurement with virtual devices, compared with the simulation."""
