"""A device plugin that advertises fake NVIDIA GPUs to the real kubelet of a GPU real node.

It speaks the kubelet's device-plugin API (``k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1``,
gRPC over a Unix socket) as NVIDIA's plugin does: it announces ``nvidia.com/gpu``, streams its
devices from ``ListAndWatch``, and answers ``Allocate`` with what the container gets:
``NVIDIA_VISIBLE_DEVICES``, a read-only mount of a per-device file, and a device node
``/dev/nvidia<i>`` (backed by the host's ``/dev/null``). Only the devices are fake; scheduling,
allocation and what the container receives are the kubelet's.

It registers through the kubelet's plugin watcher (``pluginregistration`` API: a socket in
``<kubelet root>/plugins_registry`` answering ``GetInfo``), not the ``Registration`` service on
``/var/lib/kubelet/device-plugins/kubelet.sock``: that path is fixed in the kubelet, whatever its
``--root-dir``, so several kubelets on one host share it; the plugin watcher honours the root dir.

The messages are built from a descriptor written here (the subset of the two api.proto files
this plugin uses, same names and field numbers), so no generated code is needed.

Run: ``python -m e2e.realnode.deviceplugin --registry-dir DIR --node NAME --count N``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
REGISTRATION = "pluginregistration"
RESOURCE = "nvidia.com/gpu"
PLUGIN_SOCKET = "shoal-fake-gpu.sock"

_STRING, _BOOL, _INT32, _MSG = 9, 8, 5, 11
_OPTIONAL, _REPEATED = 1, 3
_Fields = list[tuple[str, int, int, int, str]]
# message -> [(field, number, type, label, message type)] of pluginregistration's api.proto.
_REGISTRATION: dict[str, _Fields] = {
    "InfoRequest": [],
    "PluginInfo": [
        ("type", 1, _STRING, _OPTIONAL, ""),
        ("name", 2, _STRING, _OPTIONAL, ""),
        ("endpoint", 3, _STRING, _OPTIONAL, ""),
        ("supported_versions", 4, _STRING, _REPEATED, ""),
    ],
    "RegistrationStatus": [
        ("plugin_registered", 1, _BOOL, _OPTIONAL, ""),
        ("error", 2, _STRING, _OPTIONAL, ""),
    ],
    "RegistrationStatusResponse": [],
}
# The same for deviceplugin's api.proto (package v1beta1).
_MESSAGES: dict[str, _Fields] = {
    "Empty": [],
    "DevicePluginOptions": [
        ("pre_start_required", 1, _BOOL, _OPTIONAL, ""),
        ("get_preferred_allocation_available", 2, _BOOL, _OPTIONAL, ""),
    ],
    "RegisterRequest": [
        ("version", 1, _STRING, _OPTIONAL, ""),
        ("endpoint", 2, _STRING, _OPTIONAL, ""),
        ("resource_name", 3, _STRING, _OPTIONAL, ""),
        ("options", 4, _MSG, _OPTIONAL, "DevicePluginOptions"),
    ],
    "Device": [("ID", 1, _STRING, _OPTIONAL, ""), ("health", 2, _STRING, _OPTIONAL, "")],
    "ListAndWatchResponse": [("devices", 1, _MSG, _REPEATED, "Device")],
    "ContainerAllocateRequest": [("devices_ids", 1, _STRING, _REPEATED, "")],
    "AllocateRequest": [("container_requests", 1, _MSG, _REPEATED, "ContainerAllocateRequest")],
    "Mount": [
        ("container_path", 1, _STRING, _OPTIONAL, ""),
        ("host_path", 2, _STRING, _OPTIONAL, ""),
        ("read_only", 3, _BOOL, _OPTIONAL, ""),
    ],
    "DeviceSpec": [
        ("container_path", 1, _STRING, _OPTIONAL, ""),
        ("host_path", 2, _STRING, _OPTIONAL, ""),
        ("permissions", 3, _STRING, _OPTIONAL, ""),
    ],
    "ContainerAllocateResponse": [
        ("envs", 1, _MSG, _REPEATED, "ContainerAllocateResponse.EnvsEntry"),
        ("mounts", 2, _MSG, _REPEATED, "Mount"),
        ("devices", 3, _MSG, _REPEATED, "DeviceSpec"),
    ],
    "AllocateResponse": [("container_responses", 1, _MSG, _REPEATED, "ContainerAllocateResponse")],
    "PreStartContainerRequest": [("devices_ids", 1, _STRING, _REPEATED, "")],
    "PreStartContainerResponse": [],
}


def _messages(package: str, messages: dict[str, _Fields]) -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"shoal_e2e_{package}.proto", package=package, syntax="proto3"
    )
    for name, fields in messages.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{package}.{type_name}"
        if name == "ContainerAllocateResponse":  # map<string, string> envs
            entry = msg.nested_type.add(name="EnvsEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_STRING, label=_OPTIONAL)
            entry.field.add(name="value", number=2, type=_STRING, label=_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in messages
    }


M = _messages(API_VERSION, _MESSAGES) | _messages(REGISTRATION, _REGISTRATION)


def device_ids(node: str, count: int) -> list[str]:
    return [f"GPU-{node}-{i}" for i in range(count)]


def allocate_response(ids: list[str], all_ids: list[str], files_dir: Path) -> Any:
    """What one container gets for the devices the kubelet allocated to it."""
    resp = M["ContainerAllocateResponse"]()
    resp.envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(ids)
    for dev in ids:
        index = all_ids.index(dev)
        resp.mounts.add(
            container_path=f"/run/shoal-gpu/{dev}", host_path=str(files_dir / dev), read_only=True
        )
        resp.devices.add(
            container_path=f"/dev/nvidia{index}", host_path="/dev/null", permissions="rw"
        )
    return resp


class Plugin:
    def __init__(self, registry_dir: Path, node: str, count: int) -> None:
        self.socket = registry_dir / PLUGIN_SOCKET
        self.ids = device_ids(node, count)
        self.files_dir = registry_dir.parent / "fake-gpus"
        self.allocations: list[list[str]] = []
        self.registered = asyncio.Event()
        self.registration_error = ""

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Any, req: str, resp: str) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=M[req].FromString,
                response_serializer=M[resp].SerializeToString,
            )

        registration = grpc.method_handlers_generic_handler(
            f"{REGISTRATION}.Registration",
            {
                "GetInfo": unary(self.info, "InfoRequest", "PluginInfo"),
                "NotifyRegistrationStatus": unary(
                    self.notify, "RegistrationStatus", "RegistrationStatusResponse"
                ),
            },
        )
        plugin = grpc.method_handlers_generic_handler(
            f"{API_VERSION}.DevicePlugin",
            {
                "GetDevicePluginOptions": unary(self.options, "Empty", "DevicePluginOptions"),
                "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                    self.list_and_watch,
                    request_deserializer=M["Empty"].FromString,
                    response_serializer=M["ListAndWatchResponse"].SerializeToString,
                ),
                "Allocate": unary(self.allocate, "AllocateRequest", "AllocateResponse"),
                "PreStartContainer": unary(
                    self.pre_start, "PreStartContainerRequest", "PreStartContainerResponse"
                ),
            },
        )
        return [registration, plugin]

    async def info(self, request: Any, context: Any) -> Any:
        return M["PluginInfo"](
            type="DevicePlugin",
            name=RESOURCE,
            endpoint=str(self.socket),
            supported_versions=[API_VERSION],
        )

    async def notify(self, request: Any, context: Any) -> Any:
        self.registration_error = request.error
        if request.plugin_registered:
            log.info("registered %s with %d devices", RESOURCE, len(self.ids))
            self.registered.set()
        else:
            log.error("the kubelet refused the plugin: %s", request.error)
        return M["RegistrationStatusResponse"]()

    async def options(self, request: Any, context: Any) -> Any:
        return M["DevicePluginOptions"]()

    async def list_and_watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        devices = [M["Device"](ID=i, health="Healthy") for i in self.ids]
        yield M["ListAndWatchResponse"](devices=devices)
        await asyncio.Event().wait()  # devices never change; the stream stays open

    async def allocate(self, request: Any, context: Any) -> Any:
        resp = M["AllocateResponse"]()
        for creq in request.container_requests:
            ids = list(creq.devices_ids)
            self.allocations.append(ids)
            log.info("allocate %s", ids)
            resp.container_responses.append(allocate_response(ids, self.ids, self.files_dir))
        return resp

    async def pre_start(self, request: Any, context: Any) -> Any:
        return M["PreStartContainerResponse"]()


def prepare(registry_dir: Path, node: str, count: int) -> Plugin:
    """The plugin, with its per-device files written and its socket path free."""
    plugin = Plugin(registry_dir, node, count)
    plugin.files_dir.mkdir(parents=True, exist_ok=True)
    for dev in plugin.ids:
        (plugin.files_dir / dev).write_text(f"{dev}\n")
    registry_dir.mkdir(parents=True, exist_ok=True)
    plugin.socket.unlink(missing_ok=True)
    return plugin


async def serve(plugin: Plugin, stop: asyncio.Event | None = None) -> None:
    """Serves until stop is set (by default: SIGTERM/SIGINT); the kubelet finds the socket in
    its plugin registry folder."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(plugin.handlers())
    server.add_insecure_port(f"unix://{plugin.socket}")
    await server.start()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.realnode.deviceplugin")
    parser.add_argument("--registry-dir", required=True, type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--count", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(prepare(args.registry_dir, args.node, args.count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
