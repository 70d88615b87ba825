"""Examples run as their users would start them: real processes on free ports, the real Redis and NATS."""
