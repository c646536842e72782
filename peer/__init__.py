"""The peer node: wire codec today; ownership ring, scheduler, executor,
trio runtime, control API and CLI as their issues land."""
