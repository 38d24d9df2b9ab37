"""docker-py (PyPI `docker`) against imaged's Docker Engine API.

Run by tests/tests/docker_api.rs with DOCKER_HOST pointing at imaged's
run/docker.sock and the test registry's host as the only argument. Each
step is a docker-py call a user of the SDK makes; any failure raises.
"""

import sys
import time

import docker


def main(registry):
    client = docker.from_env()
    assert client.ping()
    since = time.time() - 1

    repo = f"{registry}/fixtures/app"
    image = client.images.pull(repo, tag="1.0")
    assert f"{repo}:1.0" in image.tags, image.tags

    listed = client.images.list()
    assert [i.id for i in listed] == [image.id], listed
    assert client.images.list(filters={"dangling": True}) == []

    got = client.images.get(f"{repo}:1.0")
    assert got.id == image.id
    assert got.attrs["RootFS"]["Type"] == "layers"
    assert len(got.history()) >= 1

    assert got.tag("pyapp", "v1")
    assert "pyapp:v1" in client.images.get(image.id).tags

    # save (named: the archive carries the image's first tag), remove
    # every name so that the image goes, and load it back.
    archive = b"".join(client.images.get(image.id).save(named=True))
    client.images.remove("pyapp:v1")
    client.images.remove(f"{repo}:1.0")
    try:
        client.images.get(image.id)
        raise AssertionError("the image is still there after remove")
    except docker.errors.ImageNotFound:
        pass
    loaded = client.images.load(archive)
    assert [i.id for i in loaded] == [image.id], loaded
    assert f"{repo}:1.0" in client.images.get(image.id).tags
    got = client.images.get(image.id)

    pushed = f"{registry}/py/pushed"
    assert got.tag(pushed, "v3")
    lines = list(client.images.push(pushed, tag="v3", stream=True, decode=True))
    assert not [l for l in lines if "error" in l], lines
    assert any(l.get("aux", {}).get("Tag") == "v3" for l in lines), lines

    client.images.remove(f"{pushed}:v3")
    client.images.remove(f"{repo}:1.0")
    pruned = client.images.prune(filters={"dangling": False})
    assert "SpaceReclaimed" in pruned, pruned
    assert client.images.list() == []

    until = time.time() + 1
    actions = [
        e["Action"]
        for e in client.events(since=since, until=until, decode=True)
        if e.get("Type") == "image"
    ]
    for action in ["pull", "tag", "save", "untag", "load", "push", "delete"]:
        assert action in actions, (action, actions)

    print("docker-py: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
