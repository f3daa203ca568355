"""The example blog: authors, posts, cached views, throttled API endpoints."""
