"""Publishing: the JSON message schema, the ZeroMQ publisher and the subscriber behind ``avbind listen``."""
