-- Count one chunk's outcome exactly once, even when Redis delivers the chunk twice; the last
-- chunk ends the job. Counting also drops the chunk's payload, lease and orphan mark.
-- KEYS[1] job record hash   KEYS[2] counted chunks set   KEYS[3] payloads hash   KEYS[4] leases hash
-- KEYS[5] orphans hash      KEYS[6] failed positions     KEYS[7] running jobs sorted set
-- KEYS[8] jobs ended by state (hash)
-- ARGV[1] chunk number      ARGV[2] positions done   ARGV[3] positions failed   ARGV[4] truncated positions
-- ARGV[5] error text ("" when nothing failed)   ARGV[6] failed positions, packed uint32
-- ARGV[7] progress channel  ARGV[8] job id
-- ARGV[9] the vectors this chunk computed, for the waiter ("" unless the chunk is its whole job)
-- Announces the new count on the progress channel; the last chunk announces the whole ended record
-- instead (cjson of HGETALL), there and on the record's `notify` channel, if it names one, with
-- ARGV[9] after a newline (cjson escapes every newline inside the record).
-- Returns 1 when counted, 0 when the chunk was already counted, -1 when the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'truncated', ARGV[4])
local counted = redis.call('HINCRBY', KEYS[1], 'counted', 1)
local now = redis.call('TIME')
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
redis.call('HSET', KEYS[1], 'updated', stamp)
if ARGV[5] ~= '' then
  if ARGV[6] ~= '' then
    redis.call('APPEND', KEYS[6], ARGV[6])
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[6], ttl)
    end
  end
  if redis.call('HGET', KEYS[1], 'error') == '' then
    redis.call('HSET', KEYS[1], 'error', ARGV[5])
  end
end
local job = redis.call('HMGET', KEYS[1], 'state', 'chunks', 'error', 'notify')
local announcement = counted
if job[1] == 'queued' and counted >= tonumber(job[2]) then
  local state = 'done'
  if job[3] ~= '' then
    state = 'failed'
  end
  redis.call('HSET', KEYS[1], 'state', state, 'finished', stamp)
  redis.call('ZREM', KEYS[7], ARGV[8])
  redis.call('HINCRBY', KEYS[8], state, 1)
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
  announcement = cjson.encode(redis.call('HGETALL', KEYS[1]))
  if job[4] and job[4] ~= '' then
    if ARGV[9] ~= '' then
      redis.call('PUBLISH', job[4], announcement .. '\n' .. ARGV[9])
    else
      redis.call('PUBLISH', job[4], announcement)
    end
  end
end
redis.call('PUBLISH', ARGV[7], announcement)
return 1
