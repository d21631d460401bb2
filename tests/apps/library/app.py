"""A second FastAPI app, for testing `fastgate init` and `check --openapi` beyond the example
backend: a lending library. Routers with prefixes and tags, an OAuth2 bearer scheme (a token
endpoint, the scheme on every write and on the caller's own loans), dependencies,
pydantic models whose strings are all bounded (so request schemas bound body sizes), a
page-numbered list (`page`, `page_size` with a maximum), books that embed their author (a
rename changes every book), and a server-sent event stream declared as such.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, Field

app = FastAPI(title="Lending library", version="0.3.0")
oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/token")

_authors: dict[int, dict] = {1: {"id": 1, "name": "Ursula"}, 2: {"id": 2, "name": "Italo"}}
_books: dict[int, dict] = {i: {"id": i, "title": f"Book {i}", "author_id": 1 + i % 2} for i in range(1, 31)}
_loans: dict[str, list[int]] = {}


class Author(BaseModel):
    id: int
    name: str = Field(max_length=60)


class AuthorIn(BaseModel):
    name: str = Field(min_length=1, max_length=60)


class Book(BaseModel):
    id: int
    title: str
    author: Author


class BookIn(BaseModel):
    title: str = Field(min_length=1, max_length=120)
    author_id: int


class BookPage(BaseModel):
    page: int
    page_size: int
    total: int
    books: list[Book]


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=40)
    password: str = Field(min_length=1, max_length=128)


class Token(BaseModel):
    access_token: str
    token_type: str


def reader(token: str = Depends(oauth2)) -> str:
    if not token.startswith("reader-"):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid token", headers={"WWW-Authenticate": "Bearer"})
    return token.removeprefix("reader-")


def librarian(user: str = Depends(reader)) -> str:
    if user != "librarian":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Librarians only")
    return user


def _book(b: dict) -> dict:
    return {"id": b["id"], "title": b["title"], "author": _authors[b["author_id"]]}


auth = APIRouter(prefix="/auth", tags=["auth"])


@auth.post("/token", response_model=Token)
async def login(body: Login) -> dict:
    # JSON rather than OAuth2's form body: the test environment has no python-multipart
    if body.password != "secret":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Wrong user name or password")
    return {"access_token": f"reader-{body.username}", "token_type": "bearer"}


books = APIRouter(prefix="/v1/books", tags=["books"])


@books.get("", response_model=BookPage)
async def list_books(page: int = Query(1, ge=1, le=20), page_size: int = Query(10, ge=1, le=50)) -> dict:
    rows = list(_books.values())
    start = (page - 1) * page_size
    return {"page": page, "page_size": page_size, "total": len(rows), "books": [_book(b) for b in rows[start : start + page_size]]}


@books.get("/{book_id}", response_model=Book)
async def get_book(book_id: int) -> dict:
    if book_id not in _books:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"book {book_id} not found")
    return _book(_books[book_id])


@books.post("", response_model=Book, status_code=status.HTTP_201_CREATED)
async def add_book(body: BookIn, _: str = Depends(librarian)) -> dict:
    if body.author_id not in _authors:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "unknown author")
    book_id = max(_books) + 1
    _books[book_id] = {"id": book_id, **body.model_dump()}
    return _book(_books[book_id])


authors = APIRouter(prefix="/v1/authors", tags=["authors"])


@authors.get("/{author_id}", response_model=Author)
async def get_author(author_id: int) -> dict:
    if author_id not in _authors:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"author {author_id} not found")
    return _authors[author_id]


@authors.put("/{author_id}", response_model=Author)
async def rename_author(author_id: int, body: AuthorIn, _: str = Depends(librarian)) -> dict:
    if author_id not in _authors:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"author {author_id} not found")
    _authors[author_id]["name"] = body.name
    return _authors[author_id]


me = APIRouter(prefix="/v1/me", tags=["loans"])


@me.get("/loans", response_model=list[Book])
async def my_loans(user: str = Depends(reader)) -> list[dict]:
    return [_book(_books[i]) for i in _loans.get(user, [])]


@me.post("/loans/{book_id}", response_model=list[Book], status_code=status.HTTP_201_CREATED)
async def borrow(book_id: int, user: str = Depends(reader)) -> list[dict]:
    if book_id not in _books:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"book {book_id} not found")
    _loans.setdefault(user, []).append(book_id)
    return [_book(_books[i]) for i in _loans[user]]


events = APIRouter(prefix="/v1/events", tags=["events"])


@events.get("", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def event_stream() -> StreamingResponse:
    async def gen():
        for i in range(3):
            yield f"data: tick {i}\n\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(gen(), media_type="text/event-stream")


@app.get("/healthz", include_in_schema=False)
async def healthz() -> dict:
    return {"ok": True}


for r in (auth, books, authors, me, events):
    app.include_router(r)
