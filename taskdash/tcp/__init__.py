"""The tcpx interface of seed 002: frames, the server, a client."""
