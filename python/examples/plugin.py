"""The documented example's child, in Python: the passive channel with a handler, the
active one with a receive loop. Started by `cargo run --example python_plugin`."""

import logging

from yukicomm import active_channel, passive_channel, run, shared_memory

logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
logger = logging.getLogger("plugin")


@passive_channel.on_receive(filter_func=lambda data: isinstance(data, str))
async def on_passive_receive(data):
    logger.info(f"Passive receive: {data}")


async def main():
    while True:
        data = await active_channel.async_receive()  # or active_channel.receive() in a thread
        logger.info(f"Active receive: {data}")


shared_memory.set("key", "value")
assert shared_memory.get("key") == "value"
run(main())
