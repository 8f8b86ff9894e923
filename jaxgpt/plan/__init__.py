"""Planning on accelerators that are not attached: compile jaxgpt's own train step for a GPU or TPU target
from a CPU machine and report what it needs there (`jaxgpt plan`).

- `targets`: the accelerators, from the vendors' specifications, and their devices from the compile plugins;
- `step`: the engine's step built and compiled for a target, its memory per device, the micro-batch search;
- `hlo`: the attention kernel and the collectives read from the compiled program;
- `report`: roofline and decoding estimates, the table and the JSON.

JAX must start with `JAX_PLATFORMS=cpu` (the `plan` command sets it): the compile plugins are then used
only to compile, never to look for devices.
"""
