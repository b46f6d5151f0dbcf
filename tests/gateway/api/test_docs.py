"""``/docs`` works offline: Swagger UI's files come from the API itself, and the page names ``/openapi.json``."""

from __future__ import annotations

from tests.gateway.api.conftest import Api


def test_docs_page_loads_swagger_ui_from_this_server(api: Api) -> None:
    page = api.client.get("/docs")

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "'/openapi.json'" in page.text
    script = api.client.get("/docs/assets/swagger-ui-bundle.js")
    style = api.client.get("/docs/assets/swagger-ui.css")
    assert script.status_code == 200 and len(script.content) > 100_000 and style.status_code == 200
    assert "/openapi.json" in api.client.get("/openapi.json").json()["info"]["description"]
