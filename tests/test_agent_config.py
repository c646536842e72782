"""Settings, seeds, keys and addresses: the agent's edges, without processes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio

from peer.runtime.addresses import AddressError, format_address, parse_ip_address, split_host_port
from peer.runtime.keys import KeyringError, generate_key, load_keyring, parse_keys
from peer.runtime.seeds import Seed, SeedResolver, parse_seed, read_hosts_file
from peer.runtime.settings import ConfigError, load


def test_addresses_in_every_spelling() -> None:
    assert split_host_port("10.0.0.1:7946") == ("10.0.0.1", 7946)
    assert split_host_port("[::1]:7946") == ("::1", 7946)
    assert split_host_port("node-a.internal", default_port=7946) == ("node-a.internal", 7946)
    assert parse_ip_address("[::ffff:10.0.0.1]:1") == ("10.0.0.1", 1)
    assert format_address(("::1", 7)) == "[::1]:7"
    for bad, reason in [
        ("", "empty"),
        ("::1:7946", "brackets"),
        ("[::1:7946", "missing ']'"),
        ("10.0.0.1:99999", "port"),
        ("10.0.0.1", "missing ':PORT'"),
        (":7946", "missing host"),
    ]:
        with pytest.raises(AddressError, match=reason):
            split_host_port(bad)
    with pytest.raises(AddressError, match="not an IP address"):
        parse_ip_address("example.com:1")


def test_seeds_parse_static_and_dns_forms() -> None:
    assert parse_seed("10.0.0.5:7946") == Seed("10.0.0.5", 7946, dns=False)
    assert parse_seed("dns:peers.default.svc") == Seed("peers.default.svc", 7946, dns=True)
    assert parse_seed("dns:peers:8000") == Seed("peers", 8000, dns=True)
    with pytest.raises(ValueError, match="dns: takes a name"):
        parse_seed("dns:10.0.0.1")
    with pytest.raises(ValueError, match="missing ':PORT'"):
        parse_seed("peers")


def test_hosts_file_answers_before_dns_and_is_reread(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# test fixture\n127.0.0.2 peers.test\n127.0.0.3 peers.test other\nnot-an-ip x\n")
    assert read_hosts_file(str(hosts)) == {"peers.test": ["127.0.0.2", "127.0.0.3"], "other": ["127.0.0.3"]}
    asked: list[str] = []

    async def lookup(name: str) -> list[str]:
        asked.append(name)
        if name == "unknown.test":
            raise OSError("Name or service not known")
        return ["10.9.9.9"]

    resolver = SeedResolver(
        [parse_seed(s) for s in ["dns:peers.test:7000", "10.0.0.1:7946", "db.test:1", "dns:unknown.test"]],
        hosts_file=str(hosts),
        lookup=lookup,
    )
    addresses = trio.run(resolver.resolve)
    assert addresses == [("127.0.0.2", 7000), ("127.0.0.3", 7000), ("10.0.0.1", 7946), ("10.9.9.9", 1)]
    assert asked == ["db.test", "unknown.test"] and resolver.failures == 1
    hosts.write_text("127.0.0.4 peers.test\n")
    assert trio.run(resolver.resolve)[0] == ("127.0.0.4", 7000)


def test_settings_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "peer.toml"
    config.write_text(
        'name = "from-toml"\nbind = "127.0.0.1:7000"\nseeds = ["127.0.0.1:7001", "dns:peers"]\n'
        'profile = "wan"\n[membership]\nprobe_interval = 0.5\n'
    )
    env = {"PEER_BIND": "127.0.0.1:7002", "PEER_API": "127.0.0.1:9000"}
    settings = load({"api": "127.0.0.1:9001", "name": None}, environ=env, config_path=str(config))
    assert settings.name == "from-toml"  # TOML over the default
    assert settings.bind == ("127.0.0.1", 7002)  # environment over TOML
    assert settings.api == ("127.0.0.1", 9001)  # flag over environment
    assert settings.seeds == ("127.0.0.1:7001", "dns:peers")
    config_ = settings.membership_config()
    assert config_.probe_interval == 0.5 and config_.probe_timeout == 3.0  # tuned on top of wan
    assert load({}, environ={}).bind == ("0.0.0.0", 7946)
    assert load({}, environ={"PEER_SEEDS": "127.0.0.1:1, 127.0.0.1:2"}).seeds == ("127.0.0.1:1", "127.0.0.1:2")


@pytest.mark.parametrize(
    ("toml", "env", "flags", "message"),
    [
        ('profile = "fast"', {}, {}, r"peer.toml: profile: 'fast' is not one of lan, wan, local"),
        ('colour = "red"', {}, {}, r"peer.toml: unknown setting 'colour'"),
        ("bind = 7946", {}, {}, r"peer.toml: bind: expected a string HOST:PORT"),
        ("[membership]\nprobe_intervall = 1", {}, {}, r"membership: unknown setting 'probe_intervall'"),
        ("[membership]\nprobe_interval = -1", {}, {}, r"membership: probe_interval must be positive"),
        ("bind = ", {}, {}, r"peer.toml: not valid TOML"),
        ("", {"PEER_JOIN_TIMEOUT": "soon"}, {}, r"PEER_JOIN_TIMEOUT: expected a number of seconds"),
        ("", {}, {"seeds": "dns:10.0.0.1"}, r"--seeds: seed 'dns:10.0.0.1': dns: takes a name"),
        ("", {}, {"api": "localhost:1"}, r"--api: 'localhost:1': 'localhost' is not an IP address"),
    ],
)
def test_bad_settings_name_their_source_and_key(
    tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, str], message: str
) -> None:
    config = tmp_path / "peer.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(flags, environ=env, config_path=str(config))


def test_keys_from_file_and_environment(tmp_path: Path) -> None:
    first, second = generate_key(), generate_key()
    key_file = tmp_path / "key"
    key_file.write_text(f"# cluster key, rotating\n{second}\n{first}\n")
    keyring = load_keyring(str(key_file), {})
    assert keyring is not None and keyring.primary == base64.b64decode(second) and len(keyring.keys) == 2
    from_env = load_keyring(None, {"PEER_KEY": first})
    assert from_env is not None and from_env.keys == (base64.b64decode(first),)
    assert load_keyring(None, {}) is None
    with pytest.raises(KeyringError, match="line 2: not base64"):
        parse_keys(["", "!!!"], "key file k")
    with pytest.raises(KeyringError, match="a key is 16, 24, 32, 64 bytes, this one is 3"):
        parse_keys([base64.b64encode(b"abc").decode()], "k")
    with pytest.raises(KeyringError, match="no key in it"):
        parse_keys(["# nothing"], "k")
    with pytest.raises(KeyringError, match="cannot read it"):
        load_keyring(str(tmp_path / "missing"), {})


def test_encrypt_setting_from_every_source_and_only_with_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from peer.control.cli import _parser, main

    for variable in ("PEER_KEY", "PEER_KEY_FILE", "PEER_CONFIG", "PEER_ENCRYPT"):
        monkeypatch.delenv(variable, raising=False)

    config = tmp_path / "peer.toml"
    config.write_text("encrypt = true\n")
    assert load({}, environ={}).encrypt == "off"
    assert load({}, environ={}, config_path=str(config)).encrypt == "on"
    assert load({}, environ={"PEER_ENCRYPT": "switching"}, config_path=str(config)).encrypt == "switching"
    assert load({"encrypt": "off"}, environ={"PEER_ENCRYPT": "1"}).encrypt == "off"
    with pytest.raises(ConfigError, match=r"--encrypt: expected on, off or switching, got 'maybe'"):
        load({"encrypt": "maybe"}, environ={})
    assert _parser().parse_args(["agent", "--encrypt"]).encrypt == "on"  # the flag alone
    assert _parser().parse_args(["agent", "--encrypt", "switching", "--name", "a"]).encrypt == "switching"
    load({"encrypt": "on"}, environ={}).check_encryption(keyed=True)
    with pytest.raises(ConfigError, match="encryption needs a cluster key"):
        load({"encrypt": "on"}, environ={}).check_encryption(keyed=False)
    assert main(["agent", "--encrypt", "--bind", "127.0.0.1:0"]) == 1  # no key: refused before binding
    assert "encrypt: encryption needs a cluster key" in capsys.readouterr().err
