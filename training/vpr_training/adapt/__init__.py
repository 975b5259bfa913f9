"""``vpr-adapt``: fine-tune the encoder on a robot's own recordings of its route (see :mod:`.cli`)."""
