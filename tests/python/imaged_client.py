"""A Python client of imaged, generated from proto/ with grpcio-tools.

Usage: imaged_client.py PROTO_ROOT GATEWAY_SOCKET

Generates the stubs into a temporary directory, then talks to the gateway:
SystemInfo, CreateImage, TagImage, ListImages with a filter, InspectImage,
a NOT_FOUND error, Subscribe (the tag event, replayed) and the CRI
ImageService's ImageStatus. The channel has grpcio's default options: on a
Unix socket grpc-core sends the percent-encoded socket path as :authority,
which imaged accepts. Prints "ok" and exits 0 when every answer is as
expected.
"""

import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate(proto_root: pathlib.Path, out: pathlib.Path) -> None:
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    # The well-known types (google/protobuf/timestamp.proto), which
    # `python -m grpc_tools.protoc` adds to the include path by itself.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    proto_root, socket = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]
    # The generated stubs go with the run, whatever its outcome.
    with tempfile.TemporaryDirectory(prefix="imaged-py-") as out:
        generate(proto_root, pathlib.Path(out))
        sys.path.insert(0, out)
        talk(socket)


def talk(socket: str) -> None:
    from imaged.v1 import events_pb2, images_pb2, images_pb2_grpc, public_events_pb2_grpc
    from runtime.v1 import image_service_pb2, image_service_pb2_grpc

    # No channel options: what a new user writes first.
    channel = grpc.insecure_channel(f"unix://{socket}")
    images = images_pb2_grpc.ImagesStub(channel)

    info = images.SystemInfo(images_pb2.SystemInfoRequest())
    assert info.max_concurrent_downloads == 3, info
    assert info.max_concurrent_uploads == 5, info

    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T10:00:00Z",
        "config": {"Labels": {"client": "python"}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }).encode()
    created = images.CreateImage(images_pb2.CreateImageRequest(config=config))
    assert created.id.startswith("sha256:"), created
    images.TagImage(images_pb2.TagImageRequest(source=created.id, target="py/client:v1"))

    listed = images.ListImages(images_pb2.ListImagesRequest(filters=["label=client=python"]))
    assert [i.id for i in listed.images] == [created.id], listed
    assert list(listed.images[0].repo_tags) == ["py/client:v1"], listed

    inspect = images.InspectImage(images_pb2.InspectImageRequest(image="py/client:v1"))
    assert inspect.id == created.id and inspect.config.labels["client"] == "python", inspect
    # Times as google.protobuf.Timestamp, the same instant as Docker's forms.
    assert inspect.created_at.ToJsonString() == "2024-05-01T10:00:00Z", inspect.created_at
    assert inspect.HasField("last_tagged_at"), inspect

    try:
        images.InspectImage(images_pb2.InspectImageRequest(image="py/missing:v1"))
        raise SystemExit("a missing image was found")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        assert err.details() == "No such image: py/missing:v1", err.details()

    events = public_events_pb2_grpc.EventsStub(channel)
    replayed = list(events.Subscribe(events_pb2.SubscribeRequest(
        filters=["event=tag", "image=py/client:v1"], since="10m", until="0s")))
    assert [e.action for e in replayed] == ["tag"], replayed
    assert replayed[0].time.ToNanoseconds() == replayed[0].time_nano, replayed[0]

    cri = image_service_pb2_grpc.ImageServiceStub(channel)
    status = cri.ImageStatus(image_service_pb2.ImageStatusRequest(
        image=image_service_pb2.ImageSpec(image="py/client:v1")))
    assert status.image.id == created.id and status.image.size > 0, status
    print("ok")


if __name__ == "__main__":
    main()
