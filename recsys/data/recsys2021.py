"""The raw Twitter RecSys Challenge 2021 schema: 24 columns, in the challenge's order.

The `enaging_` spelling is the real dataset's. The engaged-with user is the tweet's author
(item side); the engaging user is the one recommendations are for.
"""

import pyarrow as pa

ENGAGEMENTS: tuple[str, ...] = ("reply", "retweet", "retweet_with_comment", "like")
"""Engagement kinds, in column order; `<kind>_timestamp` is null when it did not happen."""

LABEL_COLUMNS: tuple[str, ...] = tuple(f"{kind}_timestamp" for kind in ENGAGEMENTS)

MEDIA_TYPES: tuple[str, ...] = ("Photo", "Video", "GIF")
TWEET_TYPES: tuple[str, ...] = ("Retweet", "Quote", "TopLevel")

LIST_SEPARATOR = "\t"
"""Multi-valued columns (tokens, hashtags, media, links, domains) are tab-joined strings."""

RAW_SCHEMA: pa.Schema = pa.schema(
    [
        ("text_tokens", pa.string()),
        ("hashtags", pa.string()),
        ("tweet_id", pa.string()),
        ("present_media", pa.string()),
        ("present_links", pa.string()),
        ("present_domains", pa.string()),
        ("tweet_type", pa.string()),
        ("language", pa.string()),
        ("tweet_timestamp", pa.int64()),
        ("engaged_with_user_id", pa.string()),
        ("engaged_with_user_follower_count", pa.int64()),
        ("engaged_with_user_following_count", pa.int64()),
        ("engaged_with_user_is_verified", pa.bool_()),
        ("engaged_with_user_account_creation", pa.int64()),
        ("enaging_user_id", pa.string()),
        ("enaging_user_follower_count", pa.int64()),
        ("enaging_user_following_count", pa.int64()),
        ("enaging_user_is_verified", pa.bool_()),
        ("enaging_user_account_creation", pa.int64()),
        ("engagee_follows_engager", pa.bool_()),
        ("reply_timestamp", pa.int64()),
        ("retweet_timestamp", pa.int64()),
        ("retweet_with_comment_timestamp", pa.int64()),
        ("like_timestamp", pa.int64()),
    ]
)
