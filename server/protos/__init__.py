"""Generated gRPC modules of Brogue's own APIs (see each .proto for the regenerate command)."""
