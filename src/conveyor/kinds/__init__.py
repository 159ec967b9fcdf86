"""Job kinds that ship with Conveyor."""
