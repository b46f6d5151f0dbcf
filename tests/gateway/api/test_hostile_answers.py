"""The answers a hostile-input probe got wrong: each now a 4xx whose message says what is wrong and names the fix."""

from __future__ import annotations

from tests.gateway.api.conftest import Api, png_bytes


def test_refuse_deeply_nested_configuration_params_with_422(api: Api) -> None:
    nested = "[" * 3000 + "]" * 3000

    response = api.client.post("/v1/trainings", headers=api.auth("alice"), files={"images": ("a.png", png_bytes(1))},
                               data={"configurationParams": '{"x": ' + nested + "}"})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "configurationParams" and "nested 3001 levels deep" in error["message"]


def test_refuse_put_whose_body_task_id_differs_from_path(api: Api) -> None:
    response = api.client.put("/v1/jobs/mine-1", json={"taskId": "other-1", "prompt": "p"}, headers=api.auth("alice"))

    assert response.status_code == 422 and response.json()["error"]["field"] == "taskId"
    assert api.store.get_job("mine-1") is None and api.store.get_job("other-1") is None
    same = api.client.put("/v1/jobs/mine-2", json={"taskId": "mine-2", "prompt": "p"}, headers=api.auth("alice"))
    assert same.status_code == 202


def test_name_the_form_limit_for_more_than_1000_parts(api: Api) -> None:
    image = png_bytes(1, size=(8, 8))
    files = [("images", (f"{i}.png", image)) for i in range(1001)]

    response = api.client.post("/v1/trainings", headers=api.auth("alice"), files=files)

    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "multipart form" in message and "1000" in message and "UTF-8 JSON" not in message


def test_say_a_url_is_not_a_storage_key(api: Api) -> None:
    response = api.client.put("/v1/jobs/url-1", headers=api.auth("alice"),
                              json={"images": ["https://example.com/photos/a.jpg"]})

    assert response.status_code in (404, 422)
    message = response.json()["error"]["message"]
    assert "is a URL" in message and "segment" not in message


def test_truncated_json_names_position_not_a_field(api: Api) -> None:
    response = api.client.post("/v1/generations", headers=api.auth("alice") | {"Content-Type": "application/json"},
                               content=b'{"prompt": "a')

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "field" not in error and "at character" in error["message"]
