"""Reliability tier: faults (crashes, kills, unreachable servers) and bad inputs."""
