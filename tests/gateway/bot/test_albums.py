"""Collecting /train photos: albums merged, resends dropped, counts outside 5-20 answered."""

from __future__ import annotations

import asyncio

from loramill.gateway.bot.albums import AlbumCollector, PhotoSet, count_problem


def test_count_problem_accepts_5_to_20() -> None:
    assert [count_problem(n, 5, 20) for n in (5, 12, 20)] == [None, None, None]


def test_count_problem_asks_for_more_when_too_few() -> None:
    assert "send 2 more photos" in (count_problem(3, 5, 20) or "").lower()


def test_count_problem_refuses_more_than_max() -> None:
    assert "at most 20" in (count_problem(21, 5, 20) or "")


class Outcomes:
    def __init__(self) -> None:
        self.ready: list[list[str]] = []
        self.rejected: list[str] = []

    async def on_ready(self, photo_set: PhotoSet) -> None:
        self.ready.append(list(photo_set.file_ids.values()))

    async def on_reject(self, photo_set: PhotoSet, problem: str) -> None:
        self.rejected.append(problem)


def _collector(outcomes: Outcomes) -> AlbumCollector:
    return AlbumCollector(on_ready=outcomes.on_ready, on_reject=outcomes.on_reject, min_photos=5, max_photos=20,
                          wait=0.05)


def test_collect_merges_two_albums_into_one_set() -> None:
    async def scenario() -> Outcomes:
        outcomes = Outcomes()
        albums = _collector(outcomes)
        albums.start(1, 1, 1)
        for i in range(10):  # Telegram's first album: at most 10 photos
            albums.add(1, f"u{i}", f"f{i}")
        await asyncio.sleep(0.01)
        for i in range(10, 14):  # the second album, a moment later
            albums.add(1, f"u{i}", f"f{i}")
        await asyncio.sleep(0.2)
        await albums.drain()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes.ready == [[f"f{i}" for i in range(14)]]


def test_collect_drops_the_same_photo_sent_twice() -> None:
    async def scenario() -> Outcomes:
        outcomes = Outcomes()
        albums = _collector(outcomes)
        albums.start(1, 1, 1)
        for i in [0, 1, 2, 3, 3, 4, 4]:
            albums.add(1, f"u{i}", f"f{i}")
        await asyncio.sleep(0.2)
        await albums.drain()
        return outcomes

    assert asyncio.run(scenario()).ready == [["f0", "f1", "f2", "f3", "f4"]]


def test_collect_keeps_set_open_when_too_few() -> None:
    async def scenario() -> Outcomes:
        outcomes = Outcomes()
        albums = _collector(outcomes)
        albums.start(1, 1, 1)
        for i in range(3):
            albums.add(1, f"u{i}", f"f{i}")
        await asyncio.sleep(0.2)
        await albums.drain()
        assert albums.waiting(1)
        for i in range(3, 5):  # the rest, after the hint
            albums.add(1, f"u{i}", f"f{i}")
        await asyncio.sleep(0.2)
        await albums.drain()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert len(outcomes.rejected) == 1 and "2 more" in outcomes.rejected[0]
    assert outcomes.ready == [[f"f{i}" for i in range(5)]]


def test_add_without_train_is_refused() -> None:
    async def scenario() -> bool:
        return _collector(Outcomes()).add(1, "u0", "f0")

    assert asyncio.run(scenario()) is False
