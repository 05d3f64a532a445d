"""`aigc serve` options: generated from ServeSettings, old flag spellings kept, API keys from three sources; a port
already taken."""

from __future__ import annotations

import socket

import pytest

from aigc.cli import build_parser, main
from aigc.errors import AigcError, ConfigError
from aigc.flags import with_flags
from aigc.serve.settings import ServeSettings


def settings_from(*argv: str) -> ServeSettings:
    return with_flags(ServeSettings(), build_parser().parse_args(["serve", "run", *argv]))


def test_flags_left_out_keep_the_settings_defaults():
    assert settings_from() == ServeSettings()


def test_every_flag_keeps_its_spelling():
    settings = settings_from("--host", "0.0.0.0", "--port", "9000", "--api-key", "a", "--api-key", "b",
                             "--api-key-file", "keys.txt", "--cors-origin", "http://x", "--cors-origin", "http://y",
                             "--max-batch", "4", "--max-waiting", "9", "--max-tokens", "64", "--max-n", "2",
                             "--max-body-bytes", "500", "--prefix-cache-mb", "64", "--prefill-chunk", "128", "--timeout", "7.5",
                             "--ping-interval", "0.5",
                             "--drain-timeout", "3", "--device", "cuda", "--quantize", "int8", "--backend", "llamacpp")
    assert settings.model_dump() == {
        "host": "0.0.0.0", "port": 9000, "api_keys": ["a", "b"], "api_key_file": settings.api_key_file,
        "cors_origins": ["http://x", "http://y"], "max_batch": 4, "max_waiting": 9, "max_tokens": 64, "max_n": 2,
        "max_body_bytes": 500, "prefix_cache_mb": 64.0, "prefill_chunk": 128, "timeout_s": 7.5, "ping_interval_s": 0.5, "drain_timeout_s": 3.0, "device": "cuda",
        "quantize": "int8", "backend": "llamacpp"}
    assert str(settings.api_key_file) == "keys.txt"
    assert settings_from("--max-tokens", "none").max_tokens is None


def test_help_shows_each_flag_with_its_meaning_and_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for flag in ("--host", "--port", "--api-key", "--api-key-file", "--cors-origin", "--max-batch", "--max-waiting",
                 "--max-tokens", "--max-n", "--max-body-bytes", "--timeout", "--ping-interval", "--drain-timeout",
                 "--device", "--backend"):
        assert flag in shown, flag
    for meaning in ("[default: 127.0.0.1]", "[default: 8000]", "[default: 600.0]", "[default: 30.0]",
                    "sequences decoded together"):
        assert meaning in shown, meaning


def test_a_bad_value_names_its_flag():
    with pytest.raises(ConfigError, match="max-batch"):
        settings_from("--max-batch", "0")


def test_api_keys_come_from_flags_a_key_file_and_the_environment(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("one\n\n  two \n", encoding="utf-8")
    settings = ServeSettings(api_keys=["flag"], api_key_file=keys).with_keys_from({"AIGC_API_KEY": "env"})
    assert settings.api_keys == ["flag", "one", "two", "env"] and settings.api_key_file is None
    assert ServeSettings().with_keys_from({}).api_keys == []


@pytest.mark.parametrize("keys, file_text, environ", [
    ([""], None, {}), (["ok", "  "], None, {}), ([], None, {"AIGC_API_KEY": ""}), ([], "\n \n", {}),
])
def test_an_empty_api_key_is_refused_rather_than_turning_authentication_off(tmp_path, keys, file_text, environ):
    key_file = None
    if file_text is not None:
        key_file = tmp_path / "keys"
        key_file.write_text(file_text, encoding="utf-8")
    with pytest.raises((ConfigError, ValueError), match="empty|no key"):
        ServeSettings(api_keys=keys, api_key_file=key_file).with_keys_from(environ)


@pytest.mark.parametrize("args, environ, says", [
    (["--api-key", ""], {}, "API key is empty"),
    (["--api-key", "ok", "--api-key", " "], {}, "API key is empty"),
    ([], {"AIGC_API_KEY": ""}, "AIGC_API_KEY is set but the API key is empty"),
    (["--api-key-file", "BLANK"], {}, "has no key"),
])
def test_aigc_serve_refuses_an_empty_api_key_with_one_error_line(tmp_path, monkeypatch, capsys, args, environ, says):
    """`aigc serve` (its handler in this process): exit code 2 and the reason, before any run is read."""
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    code = main(["serve", str(tmp_path / "no-run-is-read"), *[str(blank) if a == "BLANK" else a for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.startswith("error: ") and "Traceback" not in err, err


def test_a_port_in_use_is_a_clear_error_before_any_model_loads(tmp_path):
    """Another server on the port: the error names the port and the flag that picks another, and comes before
    the models load (the run here does not even exist), not as uvicorn's bind error after minutes of loading."""
    from aigc.serve.server import serve

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(AigcError, match=rf"cannot listen on 127.0.0.1:{port} .* --port {port + 1}"):
            serve([tmp_path / "no-such-run"], ServeSettings(port=port))
