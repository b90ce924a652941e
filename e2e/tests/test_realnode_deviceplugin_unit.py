"""The fake-GPU device plugin over its real gRPC socket, with this test in the kubelet's seat:
plugin-watcher registration, ListAndWatch and Allocate as the kubelet calls them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from e2e.realnode import deviceplugin as dp


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[tuple[grpc.aio.Channel, dp.Plugin]]:
    plugin = dp.prepare(tmp_path / "plugins_registry", "node-a", 2)
    stop = asyncio.Event()
    task = asyncio.create_task(dp.serve(plugin, stop))
    async with grpc.aio.insecure_channel(f"unix://{plugin.socket}") as ch:
        await asyncio.wait_for(ch.channel_ready(), 10)
        yield ch, plugin
    stop.set()
    await task


def _unary(ch: grpc.aio.Channel, method: str, req: str, resp: str) -> Any:
    return ch.unary_unary(
        method,
        request_serializer=dp.M[req].SerializeToString,
        response_deserializer=dp.M[resp].FromString,
    )


async def test_the_plugin_watcher_learns_a_device_plugin_for_nvidia_gpus(
    channel: tuple[grpc.aio.Channel, dp.Plugin],
) -> None:
    ch, plugin = channel
    get_info = _unary(ch, "/pluginregistration.Registration/GetInfo", "InfoRequest", "PluginInfo")
    info = await get_info(dp.M["InfoRequest"](), timeout=5)
    assert info.type == "DevicePlugin"
    assert info.name == "nvidia.com/gpu"
    assert info.endpoint == str(plugin.socket)
    assert list(info.supported_versions) == ["v1beta1"]
    notify = _unary(
        ch,
        "/pluginregistration.Registration/NotifyRegistrationStatus",
        "RegistrationStatus",
        "RegistrationStatusResponse",
    )
    await notify(dp.M["RegistrationStatus"](plugin_registered=True), timeout=5)
    assert plugin.registered.is_set()


async def test_devices_are_listed_and_an_allocation_gets_env_mount_and_device(
    channel: tuple[grpc.aio.Channel, dp.Plugin],
) -> None:
    ch, plugin = channel
    watch = ch.unary_stream(
        "/v1beta1.DevicePlugin/ListAndWatch",
        request_serializer=dp.M["Empty"].SerializeToString,
        response_deserializer=dp.M["ListAndWatchResponse"].FromString,
    )
    stream = watch(dp.M["Empty"]())
    first = await asyncio.wait_for(stream.read(), 5)
    assert [(d.ID, d.health) for d in first.devices] == [
        ("GPU-node-a-0", "Healthy"),
        ("GPU-node-a-1", "Healthy"),
    ]
    stream.cancel()
    allocate = _unary(ch, "/v1beta1.DevicePlugin/Allocate", "AllocateRequest", "AllocateResponse")
    req = dp.M["AllocateRequest"]()
    req.container_requests.add(devices_ids=["GPU-node-a-1"])
    (resp,) = (await allocate(req, timeout=5)).container_responses
    assert dict(resp.envs) == {"NVIDIA_VISIBLE_DEVICES": "GPU-node-a-1"}
    (mount,) = resp.mounts
    assert mount.container_path == "/run/shoal-gpu/GPU-node-a-1"
    assert mount.read_only
    assert mount.host_path == str(plugin.files_dir / "GPU-node-a-1")
    (dev,) = resp.devices
    assert (dev.container_path, dev.host_path) == ("/dev/nvidia1", "/dev/null")
    assert plugin.allocations == [["GPU-node-a-1"]]
