"""A client of the GitHub Actions cache service (the backend of actions/cache), in Python.

config    which protocol (v2 Twirp or legacy v1), service URL, token, cache mode
version   the entry `version` hash, exactly as @actions/cache computes it
keys      key validation (length, commas, count)
twirp     v2: CreateCacheEntry, FinalizeCacheEntryUpload, GetCacheEntryDownloadURL
legacy    v1: `_apis/artifactcache` lookup, reserve, PATCH upload, commit
service   Match, UploadTarget and the CacheService protocol both implement
transport one HTTP request (urllib); cache_action.stores.retry retries it
transfer  upload to / download from the signed blob URL
redact    `redact(url)`: a signed URL's `sig` never reaches a log
archive   pax tar + zstd, streamed; safe extraction
client    GhaCacheClient: lookup, download, restore, reserve, commit, save
errors    GhaCacheError and its kinds (EntryExistsError, WriteDeniedError, ...)
"""
