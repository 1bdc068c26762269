"""The publisher's check of its master-data version against the stream's last version
mark (central's database restored from a backup): a counter behind the stream jumps
past it, what waits in the outbox follows, every active branch gets a snapshot, once;
a stream without a mark, or with one that does not decode, changes nothing. The whole
story end to end: tests/e2e/test_central_restored.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import nats
from sqlalchemy import func, select

from central.db import create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import AuditEntry, MasterDataOutbox
from central.services.branches import add_branch
from central.services.masterdata_publisher import (
    MasterDataPublisher,
    current_version,
    pending_snapshot,
)
from central.sync.jetstream import ensure_streams
from protocol.masterdata import (
    KIND_VERSION,
    VERSION_KEY,
    VersionMark,
    decode_masterdata,
    encode_masterdata,
)
from protocol.subjects import DOWN_STREAM, down_subject
from tests.conftest import engine_with_branch

MARK_SUBJECT = down_subject("all", None, KIND_VERSION, VERSION_KEY)


async def _state(sessionmaker: Any) -> tuple[int, int | None, int | None, int, list[int]]:
    async with sessionmaker() as s:
        waiting = list(
            await s.scalars(
                select(MasterDataOutbox.version).where(MasterDataOutbox.published_at.is_(None))
            )
        )
        audited = await s.scalar(
            select(func.count()).where(AuditEntry.action == "masterdata.database_behind_stream")
        )
        return (
            await current_version(s),
            await pending_snapshot(s, "B1"),
            await pending_snapshot(s, "B2"),
            int(audited or 0),
            sorted(waiting),
        )


async def test_a_counter_behind_the_streams_mark_jumps_past_it_and_snapshots_the_branches(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    engine = await engine_with_branch(db_url)  # B1
    sessionmaker = create_sessionmaker(engine)
    nc = await nats.connect(nats_server.url)
    try:
        async with sessionmaker() as s, s.begin():
            await add_branch(s, code="B2", name="B2")
        js = nc.jetstream()
        await ensure_streams(js)
        before, *_ = await _state(sessionmaker)

        # Nothing to compare with, or a mark that does not decode: nothing changes.
        for data in (None, b"\x00not a version mark"):
            if data is not None:
                await js.publish(MARK_SUBJECT, data)
            publisher = MasterDataPublisher(sessionmaker)
            assert await publisher.check_stream_version(js) == 0
            assert await _state(sessionmaker) == (before, None, None, 0, [])

        # The stream is ahead: restored from a backup, the database forgot 100
        # versions. A change waits in the outbox with a version the branches hold.
        async with sessionmaker() as s, s.begin():
            s.add(
                MasterDataOutbox(version=before, kind="price", scope="all", scope_id="", key="b007")
            )
        ahead = before + 100
        mark = VersionMark(version=ahead, published_at=datetime.now(UTC))
        await js.publish(MARK_SUBJECT, encode_masterdata(mark))
        publisher = MasterDataPublisher(sessionmaker)
        assert await publisher.check_stream_version(js) == ahead
        assert await _state(sessionmaker) == (
            ahead + 3,  # one for what waits, one snapshot per branch
            ahead + 2,
            ahead + 3,
            1,
            [ahead + 1, ahead + 2, ahead + 3],
        )
        # Checked again (another process, a restart): caught up, nothing more.
        assert await MasterDataPublisher(sessionmaker).check_stream_version(js) == 0
        assert (await _state(sessionmaker))[0] == ahead + 3
    finally:
        await nc.close()
        await engine.dispose()


async def test_a_mark_ahead_published_after_the_first_check_is_caught_before_publishing(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    """Another database's process published into the stream after this publisher's
    first check: its next pass with something to publish moves past the stream's
    mark first, never publishing a version the stream already carries."""
    engine = await engine_with_branch(db_url)  # B1
    sessionmaker = create_sessionmaker(engine)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        publisher = MasterDataPublisher(sessionmaker)
        assert await publisher.check_stream_version(js) == 0
        before, *_ = await _state(sessionmaker)
        ahead = before + 50
        await js.publish(
            MARK_SUBJECT,
            encode_masterdata(VersionMark(version=ahead, published_at=datetime.now(UTC))),
        )
        # Nothing to publish: no lookup, nothing changes.
        assert await publisher.publish_pending(js) == 0
        assert await _state(sessionmaker) == (before, None, None, 0, [])

        async with sessionmaker() as s, s.begin():
            s.add(
                MasterDataOutbox(
                    version=before + 1, kind="price", scope="all", scope_id="", key="b007"
                )
            )
        # The pass finds the stream ahead: catches up instead of publishing before + 1.
        assert await publisher.publish_pending(js) == 0
        assert await _state(sessionmaker) == (
            ahead + 2,
            ahead + 2,
            None,
            1,
            [ahead + 1, ahead + 2],
        )
        # The next pass publishes above the stream's mark.
        assert await publisher.publish_pending(js) == 2
        assert publisher.last_version == ahead + 2
        last = await js.get_last_msg(DOWN_STREAM, MARK_SUBJECT)
        mark = decode_masterdata(last.data or b"")
        assert isinstance(mark, VersionMark)
        assert mark.version == ahead + 2
    finally:
        await nc.close()
        await engine.dispose()
