"""Generated gRPC stubs. Never edit by hand: change protos/ and run `make generate`."""
