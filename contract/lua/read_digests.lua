#!lua flags=no-writes
-- A job's digests at some input positions, for a worker to check a chunk's texts against them.
-- KEYS[1] the job's digests (DIGEST_BYTES per input position, in input order)
-- ARGV[1] DIGEST_BYTES; ARGV[2..] input positions
-- Returns one string per position, in the order given ('' where the job has no such position)
local size = tonumber(ARGV[1])
local digests = {}
for i = 2, #ARGV do
  local start = tonumber(ARGV[i]) * size
  digests[i - 1] = redis.call('GETRANGE', KEYS[1], start, start + size - 1)
end
return digests
