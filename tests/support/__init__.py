"""Demo actors and helpers shared by the runtime's tests."""
