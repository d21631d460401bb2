"""A third FastAPI app, laid out like FastAPI's full-stack project template: every router under
one API prefix (`settings.API_V1_STR`), the OpenAPI document served under it too
(`openapi_url=f"{API_V1_STR}/openapi.json"`), and the health endpoint in a `utils` router
(`GET /api/v1/utils/health-check/`). Nothing answers at `/openapi.json` or `/healthz`, which is
what a gateway guessing those paths would check. An OAuth2 bearer scheme guards the items.

`PREFIXED_NO_HEALTH=1` leaves the health router out, so the document has no health operation.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, status
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, Field

API_V1_STR = "/api/v1"

app = FastAPI(title="Full stack template", version="0.1.0", openapi_url=f"{API_V1_STR}/openapi.json")
oauth2 = OAuth2PasswordBearer(tokenUrl=f"{API_V1_STR}/login/access-token")

_items: dict[int, dict] = {i: {"id": i, "title": f"Item {i}", "owner": "alice"} for i in range(1, 21)}


class Item(BaseModel):
    id: int
    title: str
    owner: str


class ItemIn(BaseModel):
    title: str = Field(min_length=1, max_length=255)


class ItemsPublic(BaseModel):
    data: list[Item]
    count: int


class Token(BaseModel):
    access_token: str
    token_type: str


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=40)
    password: str = Field(min_length=1, max_length=40)


def current_user(token: str = Depends(oauth2)) -> str:
    if not token.startswith("user-"):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Could not validate credentials")
    return token.removeprefix("user-")


login = APIRouter(tags=["login"])


@login.post("/login/access-token", response_model=Token)
async def login_access_token(body: Login) -> dict:
    if body.password != "secret":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Incorrect email or password")
    return {"access_token": f"user-{body.username}", "token_type": "bearer"}


items = APIRouter(prefix="/items", tags=["items"])


@items.get("/", response_model=ItemsPublic)
async def read_items(
    user: str = Depends(current_user), skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=100)
) -> dict:
    rows = list(_items.values())
    return {"data": rows[skip : skip + limit], "count": len(rows)}


@items.get("/{id}", response_model=Item)
async def read_item(id: int, user: str = Depends(current_user)) -> dict:
    if id not in _items:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Item not found")
    return _items[id]


@items.post("/", response_model=Item)
async def create_item(body: ItemIn, user: str = Depends(current_user)) -> dict:
    new = {"id": max(_items) + 1, "title": body.title, "owner": user}
    _items[new["id"]] = new
    return new


utils = APIRouter(prefix="/utils", tags=["utils"])


@utils.get("/health-check/")
async def health_check() -> bool:
    return True


api_router = APIRouter()
api_router.include_router(login)
api_router.include_router(items)
if os.environ.get("PREFIXED_NO_HEALTH") != "1":
    api_router.include_router(utils)
app.include_router(api_router, prefix=API_V1_STR)
