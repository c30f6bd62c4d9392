"""Workflow semantics shared by controller and director cores: model, positions, order events,
instruction steps. Pure: no grpc, asyncio, time, random or subprocess."""
