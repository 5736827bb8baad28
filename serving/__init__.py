"""Online side: gRPC services over an exported bundle. Depends on `recsys`, never the reverse."""
