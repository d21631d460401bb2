"""A DB-backed FastAPI app for judging the cache on realistic traffic (issue 25): a RealWorld
"Conduit"-style blog on SQLite through SQLAlchemy's ORM. Articles embed their author's profile,
their tags, their favorite count and whether the reader favorited them; lists load each
embedded relation with a query of its own, the way ORM apps do (N+1). Writes change exactly
what the RealWorld API says they change: a favorite changes one article everywhere it appears,
a follow changes one profile as its follower sees it, a comment adds to one article's thread.

Auth: `Authorization: Token <username>` (the token is the name: a bench needs no secrets).
`GET /debug/queries` counts the SQL statements executed since the last `POST /debug/queries/reset`.

Environment: CONDUIT_DB (the SQLite file; a fresh one in a temporary directory by default),
CONDUIT_USERS (200), CONDUIT_ARTICLES (2000), CONDUIT_SEED (1).
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import uuid
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import ForeignKey, String, Text, create_engine, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)
    bio: Mapped[str] = mapped_column(Text, default="")


class Follow(Base):
    __tablename__ = "follows"
    follower_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    followee_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


class Tag(Base):
    __tablename__ = "tags"
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(30), primary_key=True, index=True)


class Favorite(Base):
    __tablename__ = "favorites"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"), primary_key=True, index=True)


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(80))
    description: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    # lazy: each list item loads its author when it is read, one query each
    author: Mapped[User] = relationship(lazy="select")


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    author: Mapped[User] = relationship(lazy="select")


DB = os.environ.get("CONDUIT_DB") or os.path.join(tempfile.mkdtemp(prefix="conduit-"), "conduit.db")
engine = create_engine(f"sqlite:///{DB}", connect_args={"check_same_thread": False})
SessionLocal = sessionmaker(engine, expire_on_commit=False)
_queries = 0
_lock = threading.Lock()


@event.listens_for(engine, "before_cursor_execute")
def _count(*_args):
    global _queries
    with _lock:
        _queries += 1


TAGS = [f"tag{i}" for i in range(20)]
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def seed() -> None:
    rng = random.Random(int(os.environ.get("CONDUIT_SEED", "1")))
    n_users = int(os.environ.get("CONDUIT_USERS", "200"))
    n_articles = int(os.environ.get("CONDUIT_ARTICLES", "2000"))
    Base.metadata.create_all(engine)
    with SessionLocal.begin() as s:
        if s.scalar(select(func.count()).select_from(User)):
            return
        s.add_all(User(id=i, username=f"user{i}", bio=f"bio of user{i}") for i in range(1, n_users + 1))
        for a in range(1, n_articles + 1):
            when = EPOCH + timedelta(minutes=a)
            s.add(Article(id=a, slug=f"article-{a}", title=f"Article {a}", description=f"About {a}", body="text " * 40,
                          author_id=rng.randint(1, n_users), created_at=when, updated_at=when))
            s.add_all(Tag(article_id=a, name=t) for t in rng.sample(TAGS, 2))
        favs = {(rng.randint(1, n_users), rng.randint(1, n_articles)) for _ in range(n_articles * 3)}
        s.add_all(Favorite(user_id=u, article_id=a) for u, a in favs)
        follows = {(rng.randint(1, n_users), rng.randint(1, n_users)) for _ in range(n_users * 5)}
        s.add_all(Follow(follower_id=a, followee_id=b) for a, b in follows if a != b)
        for c in range(1, n_articles * 2 + 1):
            s.add(Comment(id=c, article_id=rng.randint(1, n_articles), author_id=rng.randint(1, n_users), body=f"comment {c}",
                          created_at=EPOCH + timedelta(minutes=c)))


seed()
app = FastAPI(title="Conduit", version="1.0.0")


def db():
    with SessionLocal() as s:
        yield s


def viewer(authorization: str | None = Header(default=None), s: Session = Depends(db)) -> User | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    user = s.scalar(select(User).where(User.username == token)) if scheme == "Token" else None
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid token")
    return user


def required(user: User | None = Depends(viewer)) -> User:
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Missing token")
    return user


class Profile(BaseModel):
    username: str
    bio: str
    following: bool


class ArticleOut(BaseModel):
    slug: str
    title: str
    description: str
    body: str
    tagList: list[str]
    createdAt: datetime
    updatedAt: datetime
    favorited: bool
    favoritesCount: int
    author: Profile


class ArticleResponse(BaseModel):
    article: ArticleOut


class ArticleList(BaseModel):
    articles: list[ArticleOut]
    articlesCount: int


class CommentOut(BaseModel):
    id: int
    body: str
    createdAt: datetime
    author: Profile


class CommentList(BaseModel):
    comments: list[CommentOut]


class CommentResponse(BaseModel):
    comment: CommentOut


class ProfileResponse(BaseModel):
    profile: Profile


class TagList(BaseModel):
    tags: list[str]


class ArticleIn(BaseModel):
    title: str = Field(min_length=1, max_length=80)
    description: str = Field(default="", max_length=200)
    body: str = Field(min_length=1, max_length=10000)
    tagList: list[str] = Field(default_factory=list, max_length=10)


class ArticleCreate(BaseModel):
    article: ArticleIn


class ArticleUpdate(BaseModel):
    title: str | None = Field(default=None, min_length=1, max_length=80)
    body: str | None = Field(default=None, min_length=1, max_length=10000)


class ArticleUpdateBody(BaseModel):
    article: ArticleUpdate


class CommentIn(BaseModel):
    body: str = Field(min_length=1, max_length=2000)


class CommentCreate(BaseModel):
    comment: CommentIn


def profile(s: Session, user: User, me: User | None) -> Profile:
    following = me is not None and s.get(Follow, (me.id, user.id)) is not None
    return Profile(username=user.username, bio=user.bio, following=following)


def article_out(s: Session, a: Article, me: User | None) -> ArticleOut:
    # one query per relation, as an ORM app without eager loading does
    tags = sorted(s.scalars(select(Tag.name).where(Tag.article_id == a.id)))
    count = s.scalar(select(func.count()).select_from(Favorite).where(Favorite.article_id == a.id)) or 0
    favorited = me is not None and s.get(Favorite, (me.id, a.id)) is not None
    return ArticleOut(slug=a.slug, title=a.title, description=a.description, body=a.body, tagList=tags,
                      createdAt=a.created_at, updatedAt=a.updated_at, favorited=favorited, favoritesCount=count,
                      author=profile(s, a.author, me))


def find(s: Session, slug: str) -> Article:
    a = s.scalar(select(Article).where(Article.slug == slug))
    if a is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Article not found")
    return a


def user_named(s: Session, username: str) -> User:
    u = s.scalar(select(User).where(User.username == username))
    if u is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Profile not found")
    return u


articles = APIRouter(prefix="/api/articles", tags=["articles"])


@articles.get("", response_model=ArticleList)
def list_articles(
    tag: str | None = None,
    author: str | None = None,
    favorited: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0, le=10000),
    me: User | None = Depends(viewer),
    s: Session = Depends(db),
):
    q = select(Article)
    if tag:
        q = q.where(Article.id.in_(select(Tag.article_id).where(Tag.name == tag)))
    if author:
        q = q.where(Article.author_id == user_named(s, author).id)
    if favorited:
        q = q.where(Article.id.in_(select(Favorite.article_id).where(Favorite.user_id == user_named(s, favorited).id)))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(Article.created_at.desc()).limit(limit).offset(offset)).all()
    return {"articles": [article_out(s, a, me) for a in rows], "articlesCount": total}


@articles.get("/feed", response_model=ArticleList)
def feed(limit: int = Query(20, ge=1, le=100), offset: int = Query(0, ge=0, le=10000), me: User = Depends(required), s: Session = Depends(db)):
    q = select(Article).where(Article.author_id.in_(select(Follow.followee_id).where(Follow.follower_id == me.id)))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(Article.created_at.desc()).limit(limit).offset(offset)).all()
    return {"articles": [article_out(s, a, me) for a in rows], "articlesCount": total}


@articles.get("/{slug}", response_model=ArticleResponse)
def get_article(slug: str, me: User | None = Depends(viewer), s: Session = Depends(db)):
    return {"article": article_out(s, find(s, slug), me)}


@articles.post("", response_model=ArticleResponse, status_code=status.HTTP_201_CREATED)
def create_article(body: ArticleCreate, me: User = Depends(required), s: Session = Depends(db)):
    now = datetime.now(timezone.utc)
    # the database assigns the id: concurrent creates never collide
    a = Article(slug=f"new-{uuid.uuid4().hex[:12]}", title=body.article.title, description=body.article.description,
                body=body.article.body, author_id=me.id, created_at=now, updated_at=now)
    s.add(a)
    s.flush()
    s.add_all(Tag(article_id=a.id, name=t) for t in sorted(set(body.article.tagList)))
    s.commit()
    return {"article": article_out(s, a, me)}


@articles.put("/{slug}", response_model=ArticleResponse)
def update_article(slug: str, body: ArticleUpdateBody, me: User = Depends(required), s: Session = Depends(db)):
    a = find(s, slug)
    if a.author_id != me.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Only the author may edit an article")
    if body.article.title is not None:
        a.title = body.article.title
    if body.article.body is not None:
        a.body = body.article.body
    a.updated_at = datetime.now(timezone.utc)
    s.commit()
    return {"article": article_out(s, a, me)}


@articles.post("/{slug}/favorite", response_model=ArticleResponse)
def favorite(slug: str, me: User = Depends(required), s: Session = Depends(db)):
    a = find(s, slug)
    if s.get(Favorite, (me.id, a.id)) is None:
        s.add(Favorite(user_id=me.id, article_id=a.id))
        s.commit()
    return {"article": article_out(s, a, me)}


@articles.delete("/{slug}/favorite", response_model=ArticleResponse)
def unfavorite(slug: str, me: User = Depends(required), s: Session = Depends(db)):
    a = find(s, slug)
    fav = s.get(Favorite, (me.id, a.id))
    if fav is not None:
        s.delete(fav)
        s.commit()
    return {"article": article_out(s, a, me)}


@articles.get("/{slug}/comments", response_model=CommentList)
def comments(slug: str, me: User | None = Depends(viewer), s: Session = Depends(db)):
    a = find(s, slug)
    rows = s.scalars(select(Comment).where(Comment.article_id == a.id).order_by(Comment.id)).all()
    return {"comments": [CommentOut(id=c.id, body=c.body, createdAt=c.created_at, author=profile(s, c.author, me)) for c in rows]}


@articles.post("/{slug}/comments", response_model=CommentResponse)
def add_comment(slug: str, body: CommentCreate, me: User = Depends(required), s: Session = Depends(db)):
    a = find(s, slug)
    c = Comment(article_id=a.id, author_id=me.id, body=body.comment.body, created_at=datetime.now(timezone.utc))
    s.add(c)
    s.commit()
    return {"comment": CommentOut(id=c.id, body=c.body, createdAt=c.created_at, author=profile(s, me, me))}


profiles = APIRouter(prefix="/api/profiles", tags=["profiles"])


@profiles.get("/{username}", response_model=ProfileResponse)
def get_profile(username: str, me: User | None = Depends(viewer), s: Session = Depends(db)):
    return {"profile": profile(s, user_named(s, username), me)}


@profiles.post("/{username}/follow", response_model=ProfileResponse)
def follow(username: str, me: User = Depends(required), s: Session = Depends(db)):
    u = user_named(s, username)
    if u.id != me.id and s.get(Follow, (me.id, u.id)) is None:
        s.add(Follow(follower_id=me.id, followee_id=u.id))
        s.commit()
    return {"profile": profile(s, u, me)}


@profiles.delete("/{username}/follow", response_model=ProfileResponse)
def unfollow(username: str, me: User = Depends(required), s: Session = Depends(db)):
    u = user_named(s, username)
    f = s.get(Follow, (me.id, u.id))
    if f is not None:
        s.delete(f)
        s.commit()
    return {"profile": profile(s, u, me)}


tags = APIRouter(prefix="/api/tags", tags=["tags"])


@tags.get("", response_model=TagList)
def list_tags(s: Session = Depends(db)):
    return {"tags": sorted(set(s.scalars(select(Tag.name))))}


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.get("/debug/queries", include_in_schema=False)
def queries():
    return {"queries": _queries}


@app.post("/debug/queries/reset", include_in_schema=False)
def reset_queries():
    global _queries
    with _lock:
        _queries = 0
    return {"queries": 0}


for r in (articles, profiles, tags):
    app.include_router(r)
