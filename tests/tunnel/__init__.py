"""The tunnel end to end: relay, agent and client on real loopback sockets."""
