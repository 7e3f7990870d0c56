-- Count one chunk's outcome exactly once, even when Redis delivers the chunk twice.
-- KEYS[1] job record hash   KEYS[2] set of counted chunk numbers
-- ARGV[1] chunk number      ARGV[2] positions the chunk covers   ARGV[3] truncated positions
-- ARGV[4] "done" | "failed" ARGV[5] error text ("" when done)     ARGV[6] now (unix seconds)
-- ARGV[7] progress channel      ARGV[8] TTL of the counted-chunks set (the job's TTL)
-- Returns 1 when counted, 0 when the chunk was already counted, -1 when the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('HINCRBY', KEYS[1], ARGV[4], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'truncated', ARGV[3])
if ARGV[4] == 'failed' and redis.call('HGET', KEYS[1], 'error') == '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[5])
end
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed'))
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if done + failed >= total then
  local state = 'done'
  if failed > 0 then
    state = 'failed'
  end
  redis.call('HSET', KEYS[1], 'state', state, 'finished', ARGV[6])
end
redis.call('PUBLISH', ARGV[7], done + failed)
return 1
