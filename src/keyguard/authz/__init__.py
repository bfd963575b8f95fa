"""The authorization decision, phase by phase, and its gRPC shell.

``request.extract`` (facts) → ``decide.Decider`` (identify, judge, meter) →
``render.Renderer`` (wire bytes) → ``observe.Recorder`` (metrics, one log line);
``service.AuthorizationService.Check`` strings them together. Only ``service`` imports
gRPC, and nothing here imports a Redis client.
"""
