"""AWS IoT Greengrass v2: the IPC uplink and the component configuration watcher."""
