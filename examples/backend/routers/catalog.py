"""A catalog with related resources, the shape real FastAPI apps have: items (a collection
with validated `limit`/`offset`), each with reviews (a sub-resource) and an embedded owner
profile. Writes change more than their own URL: a review changes its item's `review_count`
and `rating`, and the item list; renaming a user changes every item that embeds them.

Reads are public; writes need a bearer token (routers/auth.py). Every query goes through
`state.query()`, so BACKEND_DB_LATENCY applies.

app.py includes this router twice, under /api/v1 and /api (a router included twice, as teams
suspect in their own apps): the same operations answer under both prefixes.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

import state
from routers.auth import Caller, current_user

router = APIRouter(tags=["catalog"])

CATEGORIES = ["books", "music", "tools", "games"]
_users: dict[str, dict] = {"alice": {"id": "alice", "name": "Alice"}, "bob": {"id": "bob", "name": "Bob"}}
_items: dict[int, dict] = {}
_reviews: dict[int, list[dict]] = {}


def _seed() -> None:
    _items.clear()
    _reviews.clear()
    for i in range(1, 61):
        owner = "alice" if i % 2 else "bob"
        _items[i] = {"id": i, "name": f"Item {i}", "price": float(i), "category": CATEGORIES[i % 4], "owner": owner}
        _reviews[i] = []


_seed()


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=80)
    price: float = Field(gt=0, le=100000)
    category: str = Field(pattern="^(books|music|tools|games)$")


class ItemPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=80)
    price: float | None = Field(default=None, gt=0, le=100000)


class ReviewIn(BaseModel):
    stars: int = Field(ge=1, le=5)
    text: str = Field(default="", max_length=2000)


class Owner(BaseModel):
    id: str
    name: str


class ItemOut(BaseModel):
    id: int
    name: str
    price: float
    category: str
    owner: Owner
    review_count: int
    rating: float | None


class ItemPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[ItemOut]


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=80)


def _out(item: dict) -> dict:
    reviews = _reviews.get(item["id"], [])
    rating = round(sum(r["stars"] for r in reviews) / len(reviews), 2) if reviews else None
    return {**item, "owner": _users[item["owner"]], "review_count": len(reviews), "rating": rating}


async def _get(item_id: int) -> dict:
    await state.query()
    item = _items.get(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return item


@router.get("/categories")
async def categories(response: Response) -> dict:
    # Reference data a real team marks cacheable.
    response.headers["Cache-Control"] = "public, max-age=300"
    return {"categories": CATEGORIES}


@router.get("/items", response_model=ItemPage)
async def list_items(
    limit: int = Query(20, ge=1, le=100, description="page size"),
    offset: int = Query(0, ge=0, le=10000),
    category: str | None = Query(None, pattern="^(books|music|tools|games)$"),
) -> dict:
    await state.query()
    rows = [i for i in _items.values() if category is None or i["category"] == category]
    return {"total": len(rows), "limit": limit, "offset": offset, "items": [_out(i) for i in rows[offset : offset + limit]]}


@router.get("/items/{item_id}", response_model=ItemOut)
async def get_item(item_id: int) -> dict:
    return _out(await _get(item_id))


@router.post("/items", response_model=ItemOut, status_code=status.HTTP_201_CREATED)
async def create_item(body: ItemIn, request: Request, response: Response, caller: Caller = Depends(current_user)) -> dict:
    await state.query()
    _users.setdefault(caller.user_id, {"id": caller.user_id, "name": caller.user_id.title()})
    item_id = max(_items, default=0) + 1
    _items[item_id] = {"id": item_id, **body.model_dump(), "owner": caller.user_id}
    _reviews[item_id] = []
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{item_id}"
    return _out(_items[item_id])


def _owned(item: dict, caller: Caller) -> None:
    if not caller.admin and item["owner"] != caller.user_id:
        raise HTTPException(status_code=403, detail="not your item")


@router.put("/items/{item_id}", response_model=ItemOut)
async def replace_item(item_id: int, body: ItemIn, caller: Caller = Depends(current_user)) -> dict:
    item = await _get(item_id)
    _owned(item, caller)
    item.update(body.model_dump())
    return _out(item)


@router.patch("/items/{item_id}", response_model=ItemOut)
async def update_item(item_id: int, body: ItemPatch, caller: Caller = Depends(current_user)) -> dict:
    item = await _get(item_id)
    _owned(item, caller)
    item.update(body.model_dump(exclude_none=True))
    return _out(item)


@router.delete("/items/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_item(item_id: int, caller: Caller = Depends(current_user)) -> Response:
    item = await _get(item_id)
    _owned(item, caller)
    del _items[item_id]
    _reviews.pop(item_id, None)
    return Response(status_code=204)


@router.get("/items/{item_id}/reviews")
async def list_reviews(item_id: int, limit: int = Query(20, ge=1, le=50), offset: int = Query(0, ge=0)) -> dict:
    await _get(item_id)
    rows = _reviews[item_id]
    return {"total": len(rows), "items": rows[offset : offset + limit]}


@router.post("/items/{item_id}/reviews", status_code=status.HTTP_201_CREATED)
async def add_review(item_id: int, body: ReviewIn, caller: Caller = Depends(current_user)) -> dict:
    await _get(item_id)
    review = {"id": len(_reviews[item_id]) + 1, "author": caller.user_id, **body.model_dump()}
    _reviews[item_id].append(review)
    return review


@router.get("/users/{user_id}/profile", response_model=Owner)
async def profile(user_id: str) -> dict:
    await state.query()
    if user_id not in _users:
        raise HTTPException(status_code=404, detail=f"user {user_id} not found")
    return _users[user_id]


@router.put("/users/{user_id}/profile", response_model=Owner)
async def rename(user_id: str, body: UserIn, caller: Caller = Depends(current_user)) -> dict:
    if not caller.admin and caller.user_id != user_id:
        raise HTTPException(status_code=403, detail="not your profile")
    await state.query()
    _users[user_id] = {"id": user_id, "name": body.name}
    return _users[user_id]


def reset() -> None:
    _seed()
