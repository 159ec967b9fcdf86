"""The API's routers, one module per resource; ``seed`` holds the QuDemo routes."""
