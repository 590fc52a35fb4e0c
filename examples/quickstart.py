"""A short tour of dcm_sync on the embedded ``memory://`` backend: two "servers" in one process.

Run:  python examples/quickstart.py

Each manager stands for one server process; with ``REDIS_URL=redis://...`` set they would be
separate processes sharing one Redis. Sockets here are stand-ins that print what they receive.
"""

from __future__ import annotations

import time

from dcm_sync import Config, UnknownConnectionError, create_distributed_connection_manager


class PrintingSocket:
    """Anything with send(str) and close() can be registered; this one prints."""

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, message: str) -> None:
        print(f"  {self.name:>6} <- {message}")

    def close(self) -> None:
        print(f"  {self.name:>6} closed")


def pause() -> None:
    time.sleep(0.3)  # let the other server's listener deliver before printing the next step


def main() -> None:
    config = Config(redis_url="memory://quickstart", heartbeat_interval=1.0, heartbeat_ttl=3.0)
    server_a = create_distributed_connection_manager(None, config, server_port=3001)
    server_b = create_distributed_connection_manager(None, config, server_port=3002)
    try:
        alice = server_a.register_connection(PrintingSocket("alice"), "alice")
        bob = server_b.register_connection(PrintingSocket("bob"), "bob")
        carol = server_b.register_connection(PrintingSocket("carol"), "carol")
        for conn in (alice, bob, carol):
            server_a.join_room(conn, "lobby")  # works for connections on any server

        print("1. alice's server broadcasts to the lobby (except alice):")
        server_a.broadcast_to_room("lobby", {"from": "alice", "text": "hello, lobby"}, exclude=[alice])
        pause()

        print("2. a direct message from server A to bob on server B:")
        print("  delivered:", server_a.send_to_connection(bob, {"from": "alice", "text": "hi bob"}))
        pause()

        print("3. stats seen from server B:")
        stats = server_b.get_distributed_stats()
        print(f"  servers={stats.active_servers} connections={stats.total_connections} "
              f"rooms={stats.total_rooms}")

        print("4. server A removes carol (she lives on server B); the lobby is told:")
        server_a.remove_connection(carol)
        pause()
        try:
            server_a.touch(carol)
        except UnknownConnectionError as exc:
            print(f"  touch(carol) -> UnknownConnectionError: {exc}")

        print("5. server B shuts down; alice hears that bob left:")
        server_b.shutdown()
        pause()
    finally:
        server_b.shutdown()
        server_a.shutdown()


if __name__ == "__main__":
    main()
