"""A faithful HTTP fake of the OpenAI, Anthropic and Groq admin usage/cost APIs.

Used by every test and by the docker-compose demo. Data is synthetic and deterministic
(`dataset`), costs follow the simulator's price card (`prices`), and
`server.SimulatorServer` serves it with a controllable clock and fault injection. It speaks
the providers' wire formats in its own vocabulary (`vocab`) and imports nothing from the
exporter. This file imports nothing either, so no module here imports its package back.
"""
