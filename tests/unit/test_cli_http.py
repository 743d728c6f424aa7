"""The CLI over the HTTP client: a missing or wrong credential says how to pass one; `rayfin up`
prints the API's URL on its own line."""
import httpx

from rayfin import cli
from rayfin.up import Running
from tests.support.builders import config


def test_missing_token_says_how_to_pass_one(monkeypatch, capsys):
    monkeypatch.delenv("RAYFIN_TOKEN", raising=False)
    assert cli.main(["status", "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "Unauthorized" in err and "--token" in err and "$RAYFIN_TOKEN" in err


def test_wrong_token_says_how_to_pass_one(monkeypatch, capsys):
    def api(request):
        return httpx.Response(401, json={"error": {"type": "Unauthorized", "message": "credential not valid",
                                                   "fields": {"desk": None, "action": "read usage"}}})

    real = httpx.Client

    def client(*args, **kwargs):
        kwargs["transport"] = httpx.MockTransport(api)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "Client", client)
    assert cli.main(["jobs", "--url", "http://api", "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert "credential not valid" in err and "--token" in err and "$RAYFIN_TOKEN" in err


def test_up_prints_the_api_url():
    run = Running(config(), "10.0.0.1:6379", "http://127.0.0.1:8265", None, "http://127.0.0.1:8000", None,
                  api_url="http://127.0.0.1:8000/api")
    assert "api: http://127.0.0.1:8000/api" in run.endpoint_lines()
